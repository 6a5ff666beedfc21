module github.com/caddy-par/caddy-par/integration

go 1.26
