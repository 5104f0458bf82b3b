from caravane.cli import main

main()
