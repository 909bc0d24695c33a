"""ucgate.lab"""
