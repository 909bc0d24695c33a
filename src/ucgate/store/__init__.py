"""ucgate.store"""
