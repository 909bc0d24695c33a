"""Test labs: a throwaway Samba AD domain controller (samba.py) and its pytest fixture."""
