"""nbgrader's settings for the students of this course (and for anyone who fetches, validates or submits).

Install it where every student's nbgrader reads it: on a hub or a shared machine, as /etc/jupyter/nbgrader_config.py
(a folder of `jupyter --paths`' config list); for one student, as ~/.jupyter/nbgrader_config.py. See
book/instructor_guide.md.
"""

import os

c = get_config()  # noqa: F821 (nbgrader defines get_config when it reads this file)

c.CourseDirectory.course_id = "large-models"
# nbgrader's default exchange is /usr/local/share/nbgrader/exchange; set COURSE_EXCHANGE (or edit this line) for
# another shared folder. It must be the folder the teacher's commands use.
if os.environ.get("COURSE_EXCHANGE"):
    c.Exchange.root = os.environ["COURSE_EXCHANGE"]
# `nbgrader validate` cuts every line of an error at Validator.width characters (default 90); the self-checks'
# hints are wrapped at 80, so 120 shows them whole, with the "SelfCheckFailed: " in front of the first line.
c.Validator.width = 120
