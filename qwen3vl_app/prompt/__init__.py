"""A request's messages become the token ids and positions the engine runs, in four steps:

  messages.py   OpenAI messages -> template parts and the media references they name
  build.py      the byte bound, and tokenization off the gevent hub when the text is large
  template.py   the model folder's chat template rendered and tokenized; the length check
  vision.py     each image/video placeholder expanded to its vision tokens; M-RoPE positions

Nothing here imports torch.
"""
