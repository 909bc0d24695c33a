"""ucgate.gateway"""
