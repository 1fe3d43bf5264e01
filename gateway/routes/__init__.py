"""Route handlers, one module per resource. Each module exposes ROUTES: a tuple of gateway.router.RouteSpec."""
