"""Class names as knowledge (SKILL, Sec. 7): a text encoder for names, corrective scoring by name
similarity and the reuse of learned class weights."""
