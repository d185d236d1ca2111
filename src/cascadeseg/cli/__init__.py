"""cascadeseg.cli"""
