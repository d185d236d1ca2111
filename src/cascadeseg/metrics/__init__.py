"""cascadeseg.metrics"""
