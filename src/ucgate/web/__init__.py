"""ucgate.web"""
