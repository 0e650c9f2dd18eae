from concilium.cli.main import app

app(prog_name="concilium")
