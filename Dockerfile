# notifyd: one static binary, every role.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
# The embedded broker's patched kfake (go.mod replaces it; third_party/kfake/PATCHES.md).
COPY third_party ./third_party
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -o /notifyd ./cmd/notifyd

FROM debian:12-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
 && useradd --system --home /var/lib/notifyd --create-home notifyd
COPY --from=build /notifyd /usr/local/bin/notifyd
USER notifyd
WORKDIR /var/lib/notifyd
EXPOSE 8080
ENTRYPOINT ["notifyd"]
