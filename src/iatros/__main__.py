from iatros.cli import app

app()
