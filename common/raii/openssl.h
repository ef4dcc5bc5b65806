// unique_ptr aliases for every OpenSSL object the project uses.
#pragma once

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include "common/raii/deleter.h"

namespace sg::ossl {

using PKey = CPtr<EVP_PKEY, EVP_PKEY_free>;
using PKeyCtx = CPtr<EVP_PKEY_CTX, EVP_PKEY_CTX_free>;
using MdCtx = CPtr<EVP_MD_CTX, EVP_MD_CTX_free>;
using Bio = CPtr<BIO, BIO_free_all>;
using X509Ptr = CPtr<X509, X509_free>;

}  // namespace sg::ossl
