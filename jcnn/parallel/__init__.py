"""Where a program runs: the ('variant', 'data') device mesh and several processes (mesh), and what this machine is
and the settings measured for it (machine).

May import: jcnn.config, errors, data. Nothing that trains (the train step passes its chunk probe in).
"""
