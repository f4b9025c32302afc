from kpgen.cli import main

main()
