package mic

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/mic/desired"
)

// aaiWriter writes AzureAssignedIdentities: each write is timed and counted, and remembered in
// the overlay until the cache shows it. Writes return the object as written (nil when nothing
// was written, e.g. the namespace is gone), for the caller to book.
type aaiWriter struct {
	log logr.Logger
	c   client.Client // writes go to the API server
	api client.Reader // uncached reads after a conflict
	m   *Metrics
	ov  *overlay
}

func (w *aaiWriter) wrote(obj *aadv1.AzureAssignedIdentity, start time.Time, d prometheus.Observer, n prometheus.Counter) *aadv1.AzureAssignedIdentity {
	d.Observe(time.Since(start).Seconds())
	n.Inc()
	w.ov.put(obj)
	return obj
}

// create writes a's object in state; an object that exists already is updated instead.
func (w *aaiWriter) create(ctx context.Context, a *desired.AAI, state aadv1.AssignedIdentityState) (*aadv1.AzureAssignedIdentity, error) {
	obj := a.Object(state)
	start := time.Now()
	err := w.c.Create(ctx, obj)
	if apierrors.IsAlreadyExists(err) {
		// The cache lagged behind someone's write: update the existing object instead.
		cur := &aadv1.AzureAssignedIdentity{}
		if gerr := w.api.Get(ctx, client.ObjectKeyFromObject(obj), cur); gerr != nil {
			return nil, fmt.Errorf("reading AzureAssignedIdentity %s after AlreadyExists: %w", a.Key, gerr)
		}
		return w.update(ctx, a, cur, state)
	}
	if err != nil {
		w.m.KubeErrors.WithLabelValues("assigned_identity_addition").Inc()
		if apierrors.IsNotFound(err) || apierrors.IsForbidden(err) {
			// Namespace gone or terminating: nothing to create.
			w.log.V(1).Info("cannot create AzureAssignedIdentity", "name", a.Key.String(), "error", err.Error())
			return nil, nil
		}
		return nil, fmt.Errorf("creating AzureAssignedIdentity %s: %w", a.Key, err)
	}
	return w.wrote(obj, start, w.m.AddDuration, w.m.AddCount), nil
}

// update rewrites have as a's object in state, keeping others' annotations and finalizers.
func (w *aaiWriter) update(ctx context.Context, a *desired.AAI, have *aadv1.AzureAssignedIdentity, state aadv1.AssignedIdentityState) (*aadv1.AzureAssignedIdentity, error) {
	for attempt := 0; ; attempt++ {
		obj := a.Object(state)
		obj.ResourceVersion = have.ResourceVersion
		obj.Annotations = maps.Clone(have.Annotations)
		if obj.Annotations == nil {
			obj.Annotations = map[string]string{}
		}
		obj.Annotations[desired.WrittenByAnnotation] = desired.WrittenByValue
		obj.Finalizers = have.Finalizers
		if !slices.Contains(obj.Finalizers, aadv1.AssignedIdentityFinalizer) {
			obj.Finalizers = append(slices.Clone(obj.Finalizers), aadv1.AssignedIdentityFinalizer)
		}
		start := time.Now()
		err := w.c.Update(ctx, obj)
		if apierrors.IsConflict(err) && attempt == 0 {
			cur := &aadv1.AzureAssignedIdentity{}
			if gerr := w.api.Get(ctx, client.ObjectKeyFromObject(obj), cur); gerr != nil {
				return nil, fmt.Errorf("re-reading AzureAssignedIdentity %s after a conflict: %w", a.Key, gerr)
			}
			have = cur
			continue
		}
		if apierrors.IsNotFound(err) {
			return nil, nil // deleted meanwhile; the next pass re-creates it
		}
		if err != nil {
			w.m.KubeErrors.WithLabelValues("assigned_identity_update").Inc()
			return nil, fmt.Errorf("updating AzureAssignedIdentity %s: %w", a.Key, err)
		}
		return w.wrote(obj, start, w.m.UpdDuration, w.m.UpdCount), nil
	}
}

// setStatus moves have to state.
func (w *aaiWriter) setStatus(ctx context.Context, a *desired.AAI, have *aadv1.AzureAssignedIdentity, state aadv1.AssignedIdentityState) (*aadv1.AzureAssignedIdentity, error) {
	obj := have.DeepCopy()
	obj.Status.Status = state
	obj.Status.AvailableReplicas = 1
	start := time.Now()
	if err := w.c.Patch(ctx, obj, client.MergeFrom(have)); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, nil
		}
		w.m.KubeErrors.WithLabelValues("update_azure_assigned_identity_status").Inc()
		return nil, fmt.Errorf("setting AzureAssignedIdentity %s to %s: %w", a.Key, state, err)
	}
	return w.wrote(obj, start, w.m.UpdDuration, w.m.UpdCount), nil
}

// remove marks an AAI Unassigned and drops MIC's finalizer in one write, then deletes it.
func (w *aaiWriter) remove(ctx context.Context, have *aadv1.AzureAssignedIdentity) error {
	start := time.Now()
	obj := have.DeepCopy()
	obj.Status.Status = aadv1.AssignedIDUnassigned
	obj.Finalizers = slices.DeleteFunc(obj.Finalizers, func(f string) bool { return f == aadv1.AssignedIdentityFinalizer })
	k := desired.Key{Namespace: have.Namespace, Name: have.Name}
	if err := w.c.Patch(ctx, obj, client.MergeFrom(have)); err != nil {
		if apierrors.IsNotFound(err) {
			w.ov.deleted(k, rvOf(have))
			return nil
		}
		w.m.KubeErrors.WithLabelValues("assigned_identity_deletion").Inc()
		return fmt.Errorf("releasing AzureAssignedIdentity %s: %w", k, err)
	}
	if obj.DeletionTimestamp == nil {
		if err := w.c.Delete(ctx, obj); err != nil && !apierrors.IsNotFound(err) {
			w.m.KubeErrors.WithLabelValues("assigned_identity_deletion").Inc()
			return fmt.Errorf("deleting AzureAssignedIdentity %s: %w", k, err)
		}
	}
	w.ov.deleted(k, rvOf(obj))
	w.m.DelDuration.Observe(time.Since(start).Seconds())
	w.m.DelCount.Inc()
	w.log.V(1).Info("released", "assignedIdentity", k.String())
	return nil
}
