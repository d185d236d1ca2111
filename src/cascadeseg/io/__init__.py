"""cascadeseg.io"""
