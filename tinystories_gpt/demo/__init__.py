"""The stories in front of people: a demo page in the browser, and the Hub Spaces that carry it.

app.py        the Gradio app: a prompt, the sampling settings, the story as it is written (self-contained)
space.py      Space folders: the static page (transformers.js, the ONNX export) or the Gradio app; their upload
static/       the static page's own files, index.html and story.js, copied into the Space as they are
__main__.py   `python -m tinystories_gpt.demo MODEL`, the same as `tinystories-demo MODEL` (cli/demo.py)
"""
