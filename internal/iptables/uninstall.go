package iptables

import (
	"context"
	"errors"
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
)

// When NMI stops, its rules stay, except on uninstall. An uninstall is recognised from the API:
// the DaemonSet that runs NMI is gone or being deleted, its namespace is being deleted, or NMI
// lost the read access to them it had at start (helm uninstall and kubectl delete remove the
// RBAC and the ServiceAccount in the same breath as the DaemonSet, often before the pods get
// SIGTERM).

// ErrNoPodIdentity means POD_NAME / POD_NAMESPACE (downward API) are not set.
var ErrNoPodIdentity = errors.New("POD_NAME and POD_NAMESPACE are not set: add them from the downward API (metadata.name, metadata.namespace), as the chart does")

// Owner is the DaemonSet that runs this NMI, found at start from NMI's own pod.
type Owner struct {
	Namespace, Name string
	UID             types.UID
	// NamespaceReadable: NMI could read its namespace at start, so the namespace's deletion
	// (and a loss of that access) means something at shutdown.
	NamespaceReadable bool
}

// ResolveOwner finds the DaemonSet that controls pod namespace/name and checks that NMI can read
// it, as it must at shutdown.
func ResolveOwner(ctx context.Context, kc kubernetes.Interface, namespace, name string) (*Owner, error) {
	if namespace == "" || name == "" {
		return nil, ErrNoPodIdentity
	}
	pod, err := kc.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("reading NMI's own pod %s/%s: %w", namespace, name, err)
	}
	ref := metav1.GetControllerOf(pod)
	if ref == nil || ref.Kind != "DaemonSet" || ref.APIVersion != appsv1.SchemeGroupVersion.String() {
		return nil, fmt.Errorf("NMI's pod %s/%s is not controlled by a DaemonSet (controller: %v): run NMI as a DaemonSet", namespace, name, ref)
	}
	ds, err := kc.AppsV1().DaemonSets(namespace).Get(ctx, ref.Name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("reading NMI's DaemonSet %s/%s (grant get on daemonsets, as the chart's NMI Role does): %w", namespace, ref.Name, err)
	}
	if ds.UID != ref.UID {
		return nil, fmt.Errorf("NMI's DaemonSet %s/%s has UID %s, the pod names %s: the pod is an orphan", namespace, ref.Name, ds.UID, ref.UID)
	}
	o := &Owner{Namespace: namespace, Name: ref.Name, UID: ref.UID}
	_, err = kc.CoreV1().Namespaces().Get(ctx, namespace, metav1.GetOptions{})
	o.NamespaceReadable = err == nil
	return o, nil
}

// ShutdownFacts are what NMI reads from the API as it stops.
type ShutdownFacts struct {
	// Owner is nil when NMI could not resolve its DaemonSet at start: nothing can prove an
	// uninstall then.
	Owner        *Owner
	DaemonSet    *appsv1.DaemonSet
	DaemonSetErr error
	// Namespace is read only when Owner.NamespaceReadable.
	Namespace    *corev1.Namespace
	NamespaceErr error
}

// ReadShutdownFacts reads NMI's DaemonSet and namespace.
func ReadShutdownFacts(ctx context.Context, kc kubernetes.Interface, o *Owner) ShutdownFacts {
	f := ShutdownFacts{Owner: o}
	if o == nil {
		return f
	}
	f.DaemonSet, f.DaemonSetErr = kc.AppsV1().DaemonSets(o.Namespace).Get(ctx, o.Name, metav1.GetOptions{})
	if o.NamespaceReadable {
		f.Namespace, f.NamespaceErr = kc.CoreV1().Namespaces().Get(ctx, o.Namespace, metav1.GetOptions{})
	}
	return f
}

// RemoveOnShutdown decides whether NMI removes its rules as it stops, and says why. Only an
// uninstall removes them; a rolling update, a restart, a drain, an API outage or anything NMI
// cannot read keeps them (fail closed: pods' IMDS connections fail until the next NMI starts).
func RemoveOnShutdown(f ShutdownFacts) (remove bool, why string) {
	o := f.Owner
	if o == nil {
		return false, "NMI's DaemonSet was not known at start, so an uninstall cannot be recognised"
	}
	ds := o.Namespace + "/" + o.Name
	switch {
	case apierrors.IsNotFound(f.DaemonSetErr):
		return true, "DaemonSet " + ds + " is gone"
	case revoked(f.DaemonSetErr):
		return true, "NMI lost read access to DaemonSet " + ds + " since start (uninstall removes its RBAC): " + f.DaemonSetErr.Error()
	case f.DaemonSetErr != nil:
		return false, "reading DaemonSet " + ds + " failed: " + f.DaemonSetErr.Error()
	case f.DaemonSet == nil:
		return false, "DaemonSet " + ds + " was not read"
	case f.DaemonSet.UID != o.UID:
		return false, "DaemonSet " + ds + " was replaced by a new one of the same name, whose pods take the rules over"
	case f.DaemonSet.DeletionTimestamp != nil:
		return true, "DaemonSet " + ds + " is being deleted"
	}
	if o.NamespaceReadable {
		switch {
		case apierrors.IsNotFound(f.NamespaceErr):
			return true, "namespace " + o.Namespace + " is gone"
		case revoked(f.NamespaceErr):
			return true, "NMI lost read access to namespace " + o.Namespace + " since start: " + f.NamespaceErr.Error()
		case f.NamespaceErr == nil && f.Namespace != nil && f.Namespace.DeletionTimestamp != nil:
			return true, "namespace " + o.Namespace + " is being deleted"
		}
	}
	return false, "DaemonSet " + ds + " is in place (rolling update, restart or eviction)"
}

func revoked(err error) bool { return apierrors.IsForbidden(err) || apierrors.IsUnauthorized(err) }
