package nmi

import (
	"context"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/binding"
	"github.com/podidentity/podidentity/internal/kubescheme"
)

// confirmTimeout bounds the fresh reads of one confirmation: past it the client is better off
// retrying (it is told to in 1 s).
const confirmTimeout = 2 * time.Second

// newConfirmReader is a client without cache: its reads without resourceVersion are quorum reads,
// answered from etcd as it is now.
func newConfirmReader(cfg *rest.Config) (client.Reader, error) {
	c, err := client.New(cfg, client.Options{Scheme: kubescheme.New()})
	if err != nil {
		return nil, fmt.Errorf("creating the client that confirms grants while a watch catches up: %w", err)
	}
	return c, nil
}

// viewCheck is one request's guard against a stale view: the currency it started with.
type viewCheck struct{ snap viewSnapshot }

func (s *Server) startView() viewCheck { return viewCheck{s.store.view.snapshot()} }

// confirmGrant is called before a token is served: when the view was not current at any time
// since the request started, everything grant g rests on is read again from the API server and
// must be exactly what the store had (same UIDs and resourceVersions; resourceVersions are only
// compared for equality, never ordered).
func (s *Server) confirmGrant(ctx context.Context, v viewCheck, g *grant) error {
	if s.store.view.still(v.snap) {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, confirmTimeout)
	defer cancel()
	err := s.confirmPod(ctx, g.pod)
	for _, b := range g.bindings {
		if err != nil {
			break
		}
		err = s.confirmObject(ctx, &aadv1.AzureIdentityBinding{}, "AzureIdentityBinding", b.Namespace, b.Name, b.ResourceVersion)
	}
	if err == nil {
		if g.implicitSA.Name != "" {
			sa := &metav1.PartialObjectMetadata{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "ServiceAccount"}}
			err = s.confirmObject(ctx, sa, "ServiceAccount", g.implicitSA.Namespace, g.implicitSA.Name, g.id.ResourceVersion)
		} else {
			err = s.confirmObject(ctx, &aadv1.AzureIdentity{}, "AzureIdentity", g.id.Namespace, g.id.Name, g.id.ResourceVersion)
		}
	}
	return s.confirmed(err)
}

// confirmPassthrough guards IMDS passthrough (exceptions and MIC's pods) the same way: the pod is
// read again, and for an exception the namespace's exceptions are listed and matched again.
func (s *Server) confirmPassthrough(ctx context.Context, v viewCheck, pod *podInfo, excepted bool) error {
	if s.store.view.still(v.snap) {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, confirmTimeout)
	defer cancel()
	err := s.confirmPod(ctx, pod)
	if err == nil && excepted {
		err = s.confirmExcepted(ctx, pod)
	}
	return s.confirmed(err)
}

func (s *Server) confirmExcepted(ctx context.Context, pod *podInfo) error {
	var list aadv1.AzurePodIdentityExceptionList
	if err := s.confirmReader.List(ctx, &list, client.InNamespace(pod.Namespace)); err != nil {
		return &ViewNotCurrentError{Detail: fmt.Sprintf("listing the AzurePodIdentityExceptions of namespace %s failed: %v", pod.Namespace, err), Err: err}
	}
	ex := make([]*aadv1.AzurePodIdentityException, len(list.Items))
	for i := range list.Items {
		ex[i] = &list.Items[i]
	}
	if !binding.IsExcepted(pod.Namespace, pod.Labels, ex) {
		return &ViewNotCurrentError{Detail: fmt.Sprintf("no AzurePodIdentityException of namespace %s matches pod %s any more", pod.Namespace, pod.key())}
	}
	return nil
}

// confirmed completes a confirmation's error (node, stale kinds), counts and logs it.
func (s *Server) confirmed(err error) error {
	if s.metrics != nil {
		result := "confirmed"
		if err != nil {
			result = "not_current"
		}
		s.metrics.viewConfirmations.WithLabelValues(result).Inc()
	}
	if err == nil {
		return nil
	}
	var e *ViewNotCurrentError
	if !errors.As(err, &e) {
		e = &ViewNotCurrentError{Detail: err.Error(), Err: err}
	}
	e.Node = s.cfg.NodeName
	e.Kinds, e.Since = s.store.view.stale()
	if s.metrics != nil {
		if len(e.Kinds) == 0 {
			s.metrics.viewNotCurrent.WithLabelValues("none").Inc()
		}
		for _, k := range e.Kinds {
			s.metrics.viewNotCurrent.WithLabelValues(k).Inc()
		}
	}
	s.log.V(1).Info("grant not served: the view is catching up and the API server does not confirm it", "error", e.Error())
	return e
}

// confirmPod reads the pod again: same UID, IP and resourceVersion as the store's copy, and
// still servable.
func (s *Server) confirmPod(ctx context.Context, pod *podInfo) error {
	if s.confirmReader == nil {
		return &ViewNotCurrentError{Detail: "this NMI has no client to confirm with"}
	}
	var p corev1.Pod
	if err := s.confirmReader.Get(ctx, types.NamespacedName{Namespace: pod.Namespace, Name: pod.Name}, &p); err != nil {
		return &ViewNotCurrentError{Detail: fmt.Sprintf("reading pod %s from the API server failed: %v", pod.key(), err), Err: err}
	}
	fresh := newPodInfo(&p)
	switch {
	case fresh.UID != pod.UID:
		return &ViewNotCurrentError{Detail: fmt.Sprintf("pod %s has been replaced (UID %s, NMI has %s)", pod.key(), fresh.UID, pod.UID)}
	case fresh.IP != pod.IP:
		return &ViewNotCurrentError{Detail: fmt.Sprintf("pod %s has IP %q, NMI has %q", pod.key(), fresh.IP, pod.IP)}
	case fresh.gone(s.cfg.ServeDeletingPods):
		return &ViewNotCurrentError{Detail: fmt.Sprintf("pod %s is terminated or being deleted", pod.key())}
	case p.ResourceVersion != pod.ResourceVersion:
		return &ViewNotCurrentError{Detail: fmt.Sprintf("pod %s has changed (resourceVersion %s, NMI has %s)", pod.key(), p.ResourceVersion, pod.ResourceVersion)}
	}
	return nil
}

// confirmObject reads one object again and compares its resourceVersion with the store's.
func (s *Server) confirmObject(ctx context.Context, obj client.Object, kind, namespace, name, rv string) error {
	if err := s.confirmReader.Get(ctx, types.NamespacedName{Namespace: namespace, Name: name}, obj); err != nil {
		return &ViewNotCurrentError{Detail: fmt.Sprintf("reading %s %s/%s from the API server failed: %v", kind, namespace, name, err), Err: err}
	}
	if obj.GetResourceVersion() != rv {
		return &ViewNotCurrentError{Detail: fmt.Sprintf("%s %s/%s has changed (resourceVersion %s, NMI has %s)", kind, namespace, name, obj.GetResourceVersion(), rv)}
	}
	return nil
}
