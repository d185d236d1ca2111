"""cascadeseg.losses"""
