"""The dataset library that data, train and eval share: row formats (`formats`), exact
duplicates (`dedupe`). Plain Python, no grpc."""
