from tiles.cli import main

main()
