"""ucgate.policy"""
