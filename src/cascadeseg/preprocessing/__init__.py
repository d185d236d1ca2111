"""cascadeseg.preprocessing"""
