from ckptfs.cli.app import main

main()
