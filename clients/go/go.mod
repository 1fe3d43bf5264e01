module github.com/hev/layer/clients/go

go 1.22
