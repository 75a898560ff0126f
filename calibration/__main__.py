from calibration.cli import main

main()
