"""ucgate.protocols"""
