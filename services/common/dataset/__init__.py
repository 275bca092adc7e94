"""The dataset library that the data, train and eval services share (plain Python, no grpc):

- `reader`: stream the rows of a JSONL file or a JSON array, in bounded memory;
- `rules`: what makes a conversations row valid (`explain_row`);
- `formats`: detect the four row formats and normalise any of them to conversations;
- `dedupe`: the one definition of an exact duplicate (stable content hash, bytes compared);
- `parallel`: worker processes over byte ranges, and their scratch folders;
- `report`: what a validation reports;
- `validate`: the validation pass over a file, and the training gate.
"""
