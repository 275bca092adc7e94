"""`wintrain`: the command line of Win-Train (gRPC client of the five services) and the
end-to-end demo (`python -m cli.demo`, through the HTTP gateway)."""
