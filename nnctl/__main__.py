from nnctl.cli.commands import main

main()
