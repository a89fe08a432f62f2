"""The auditor sandbox: policy (what an audit may touch), spawn (this process's client of
the fork server), forkserver (run as a script, standard library only), confine (between fork
and exec), reaper (a dead worker's auditors) and procgroup.

Must never exec an auditor that is not confined, unless the operator turned the sandbox off.
"""
