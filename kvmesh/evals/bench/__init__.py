"""Performance experiments behind `kvmesh bench`: each measures two methods on the same inputs in one process."""
