"""The throwaway identity of one scan: mint and always revoke it (mint), and the janitor that
removes what a killed process left behind, and only what has scanfleet's exact shape.
"""
