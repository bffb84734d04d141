"""The study runner behind ``run_train_clip.sh``: many ``train_clip.py`` jobs, JOBS_PER_GPU per GPU slot.

``settings`` reads the script's settings block and the environment, ``plan`` turns them into jobs
(run folders, skip / resume / rerun, each job's command), ``validate`` checks every job before the
first starts, ``scheduler`` runs them in process groups on the GPU slots, ``status`` reads where
each stands from the run folders (--status), and ``__main__`` tells the story and prints the
leaderboard. See docs/driver.md.
"""
