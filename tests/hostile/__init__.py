"""A hostile-input factory: small files of every kind that has made diffusion tools silently wrong
(image modes, label kinds, schema faults), written with PIL, numpy and pyarrow only, never with
mapo's own writers, each with the outcome a correct reader must give."""
