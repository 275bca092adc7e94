"""Build and development tools, kept out of the runtime packages (services/, gateway/, cli/).

- ``python -m tools.protogen``      regenerate the gRPC stubs from protos/ (``make protos``)
- ``python -m tools.buf_lint``      buf lint over protos/, offline (``make lint-protos``)
- ``python -m tools.tiny_model``    build the embedded tiny chat model, seed a workspace (``make model``)
- ``python -m tools.make_datasets`` rewrite the bundled corpus and datasets in services/common/assets/

The services only read the model folder named by ``model.base_model_path`` in config.yaml.
"""
