from refine.cli import main

main()
