"""The models of Skyport's HTTP APIs, shared by the services that answer and the clients that read them."""
