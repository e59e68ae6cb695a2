"""What two or more steps share: the pairs reader and per-pair seeds, image decoding, HR sources, teacher
folders (publish / fetch / load) and the teacher config. A step package imports no other step's package;
shared pieces live here (docs/architecture.md §2).
"""
