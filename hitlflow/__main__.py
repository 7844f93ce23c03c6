from hitlflow.cli import main

main()
