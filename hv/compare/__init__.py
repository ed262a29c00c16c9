"""`hv compare`: the course's Process vs Container vs VM table, measured on this host.

- workload.py: the one shell script every column runs, and how its markers are read
- legs.py:     the three columns (chroot process, crun/runc container, hv VM)
- rootfs.py:   the image's rootfs from hv's store, shell detection, the OCI bundle config
- measure.py:  statistics, process-tree RSS, the host's page cache
- runner.py:   the order of runs, clean-up on Ctrl-C
- report.py:   the JSON document, the table's rows and footnotes, markdown, the PNG

The package imports nothing itself (its modules import each other through it): the entry
points are hv.compare.runner's `compare`, `Options`, `parse_only` and `LEGS`.
"""
