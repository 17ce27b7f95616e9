from chatproxy.cli import main

main()
