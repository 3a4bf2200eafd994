package mic

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"maps"
	"sync"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/podidentity/podidentity/internal/cloud"
)

// Ownership records which identities MIC itself put on each VM/VMSS, in one ConfigMap per
// resource in MIC's namespace. MIC removes only those: an identity a person or another system
// assigned stays, even when a pod used it through MIC. The record is written before the PATCH
// that adds an identity, so a crash in between cannot leak an identity MIC would forget.
type ownership struct {
	c         client.Client // reads go to the API server: only the leader writes, once per change
	namespace string
	mu        sync.Mutex
	loaded    map[cloud.ResourceKey]*record
}

type record struct {
	obj *corev1.ConfigMap
	ids map[string]string // lower-cased identity ID → client ID
}

const (
	ownershipLabel = "podidentity.io/mic-ownership"
	ownershipKey   = "identities"
	resourceKey    = "resource"
)

func newOwnership(c client.Client, namespace string) *ownership {
	return &ownership{c: c, namespace: namespace, loaded: map[cloud.ResourceKey]*record{}}
}

func ownershipName(r cloud.Resource) string {
	return fmt.Sprintf("podidentity-mic-owned-%x", sha256.Sum256([]byte(r.Key().String())))[:len("podidentity-mic-owned-")+16]
}

// get returns the record of r (a copy of the ID map).
func (o *ownership) get(ctx context.Context, r cloud.Resource) (map[string]string, error) {
	rec, err := o.load(ctx, r)
	if err != nil {
		return nil, err
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	out := make(map[string]string, len(rec.ids))
	maps.Copy(out, rec.ids)
	return out, nil
}

func (o *ownership) load(ctx context.Context, r cloud.Resource) (*record, error) {
	o.mu.Lock()
	rec := o.loaded[r.Key()]
	o.mu.Unlock()
	if rec != nil {
		return rec, nil
	}
	cm := &corev1.ConfigMap{}
	err := o.c.Get(ctx, client.ObjectKey{Namespace: o.namespace, Name: ownershipName(r)}, cm)
	switch {
	case apierrors.IsNotFound(err):
		cm = nil
	case err != nil:
		return nil, fmt.Errorf("reading the ownership record of %s (ConfigMap %s/%s): %w", r, o.namespace, ownershipName(r), err)
	}
	rec = &record{obj: cm, ids: map[string]string{}}
	if cm != nil && cm.Data[ownershipKey] != "" {
		if err := json.Unmarshal([]byte(cm.Data[ownershipKey]), &rec.ids); err != nil {
			return nil, fmt.Errorf("ownership record ConfigMap %s/%s is corrupt (%w); delete it to start a fresh record (MIC then removes no identity it assigned earlier)", o.namespace, cm.Name, err)
		}
	}
	o.mu.Lock()
	o.loaded[r.Key()] = rec
	o.mu.Unlock()
	return rec, nil
}

// change adds and removes identities in r's record and writes it when it changed.
func (o *ownership) change(ctx context.Context, r cloud.Resource, add map[string]string, remove []string) error {
	rec, err := o.load(ctx, r)
	if err != nil {
		return err
	}
	o.mu.Lock()
	next := make(map[string]string, len(rec.ids)+len(add))
	maps.Copy(next, rec.ids)
	o.mu.Unlock()
	changed := false
	for k, v := range add {
		if old, ok := next[k]; !ok || (old == "" && v != "") {
			next[k] = v
			changed = true
		}
	}
	for _, k := range remove {
		if _, ok := next[k]; ok {
			delete(next, k)
			changed = true
		}
	}
	if !changed {
		return nil
	}
	b, _ := json.Marshal(next)
	var obj *corev1.ConfigMap
	if rec.obj == nil {
		obj = &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: o.namespace, Name: ownershipName(r),
			Labels: map[string]string{ownershipLabel: "true"}}, Data: map[string]string{resourceKey: r.ID(), ownershipKey: string(b)}}
		err = o.c.Create(ctx, obj)
	} else {
		obj = rec.obj.DeepCopy()
		obj.Data = map[string]string{resourceKey: r.ID(), ownershipKey: string(b)}
		err = o.c.Update(ctx, obj)
	}
	if err != nil {
		// Forget the cached record: the next attempt re-reads it (a conflict means another
		// replica wrote, e.g. right after a leader change).
		o.mu.Lock()
		delete(o.loaded, r.Key())
		o.mu.Unlock()
		return fmt.Errorf("writing the ownership record of %s (ConfigMap %s/%s): %w", r, o.namespace, ownershipName(r), err)
	}
	o.mu.Lock()
	rec.obj, rec.ids = obj, next
	o.mu.Unlock()
	return nil
}
