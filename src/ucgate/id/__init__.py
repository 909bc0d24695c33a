"""ucgate.id"""
