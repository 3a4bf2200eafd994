//go:build tools

// Package etcdbin pins the etcd server built by hack/control-plane.sh.
package etcdbin

import _ "go.etcd.io/etcd/server/v3"
