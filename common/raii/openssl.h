// unique_ptr aliases for every OpenSSL object the project uses.
#pragma once

#include <openssl/asn1.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/cms.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "common/raii/deleter.h"

namespace sg::ossl {

namespace detail {
// The STACK_OF free functions are macros and inline functions, which a
// template argument cannot name; these wrap them so a stack that owns its
// elements frees them too.
inline void free_x509_stack(STACK_OF(X509) * s) { sk_X509_pop_free(s, X509_free); }
// For stacks that only borrow their elements.
inline void free_x509_view(STACK_OF(X509) * s) { sk_X509_free(s); }
}  // namespace detail

using PKey = CPtr<EVP_PKEY, EVP_PKEY_free>;
using PKeyCtx = CPtr<EVP_PKEY_CTX, EVP_PKEY_CTX_free>;
using MdCtx = CPtr<EVP_MD_CTX, EVP_MD_CTX_free>;
using Bio = CPtr<BIO, BIO_free_all>;
using X509Ptr = CPtr<X509, X509_free>;
using X509Crl = CPtr<X509_CRL, X509_CRL_free>;
using X509Revoked = CPtr<X509_REVOKED, X509_REVOKED_free>;
using X509Ext = CPtr<X509_EXTENSION, X509_EXTENSION_free>;
using X509Name = CPtr<X509_NAME, X509_NAME_free>;
using X509Store = CPtr<X509_STORE, X509_STORE_free>;
using X509StoreCtx = CPtr<X509_STORE_CTX, X509_STORE_CTX_free>;
using X509Stack = CPtr<STACK_OF(X509), detail::free_x509_stack>;     // owns the certificates
using X509StackView = CPtr<STACK_OF(X509), detail::free_x509_view>;  // borrows them
using Cms = CPtr<CMS_ContentInfo, CMS_ContentInfo_free>;
using Asn1Integer = CPtr<ASN1_INTEGER, ASN1_INTEGER_free>;
using Asn1Time = CPtr<ASN1_TIME, ASN1_TIME_free>;
using Bignum = CPtr<BIGNUM, BN_free>;
using GeneralNames = CPtr<GENERAL_NAMES, GENERAL_NAMES_free>;
using ExtendedKeyUsage = CPtr<EXTENDED_KEY_USAGE, EXTENDED_KEY_USAGE_free>;
using NameConstraints = CPtr<NAME_CONSTRAINTS, NAME_CONSTRAINTS_free>;

}  // namespace sg::ossl
