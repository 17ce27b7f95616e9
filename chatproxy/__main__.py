from chatproxy.cli import run

run()
