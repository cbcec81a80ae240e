//! `io.jwt.verify_rs*`/`ps*`/`es*`/`eddsa` and `decode_verify` with a `cert`: the published
//! examples (RFC 7515 A.2 and A.3, RFC 8037 A.4) and tokens and keys made apart from this code
//! by Python's `cryptography` (48.0): each verifies under its key, and does not with a flipped
//! signature bit, another key, another algorithm's builtin, or a key of another type.

use super::*;

use alloc::sync::Arc;

use crate::go_crypto::keys::keys_of;

/// RFC 7515 A.2: RS256; the key as its JWK (`n`, `e`).
const RFC7515_A2: &str = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07Qe7K0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqvhJ1phCnvWh6IeYI2w9QOYEUipUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrBp0igcN_IoypGlUPQGe77Rw";
const RFC7515_A2_JWK: &str = r#"{"kty":"RSA","n":"ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ","e":"AQAB"}"#;
/// RFC 7515 A.3: ES256 on P-256.
const RFC7515_A3: &str = "eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q";
const RFC7515_A3_JWK: &str = r#"{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#;
/// RFC 8037 A.4: Ed25519 over the payload `Example of Ed25519 signing`.
const RFC8037_A4: &str = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc.hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg";
const RFC8037_A4_JWK: &str =
    r#"{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#;

// Made by Python's `cryptography`: RSA 2048 (`RSA_*`, another `OTHER_RSA_PEM`), P-256, P-384,
// P-521, P-224 and Ed25519 keys; self-signed certificates; tokens over
// `{"iss":"gantry","exp":2000000000,"nbf":1500000000,"sub":"alice"}` (`*_EXPIRED`: exp
// 1600000000), PSS salts as long as the hash (`PS256_MAX_SALT`: the longest salt); `RSA_JWKS`
// holds keys `old` (OTHER_RSA), `k1` (RSA), both `RS256`, and `ec` (the P-384 key, `ES384`).
const RSA_PEM: &str = "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAzljMpmFUZM0uBw/dnxbH\nG1ZoV2b+nhXEwwA7SYVa7AxmlWIvdW8dpe+SudGo3JIvP5sAaRGG7KQwNROUFuuG\nkzCKvP0wUjN5y2FLExoMRh6yoY166Ry1RsTPKe1/ChvzBkKLT4bNbsMdcciUoOBR\n5/ARgyOYn3SlQp4BpgNh0YlHLCG3a0eSKtRfMsDVzQFLb4kimk7iPcCmUZbuW8G0\nEgDsOMwUVb4rdzbWZ8DDAWdvhJtQH0xvXfGC6RXTNI/JvjcBHyRhgGa42Ai8TIrG\nf87GlRdBy+DuhwSqxBcuHWmcvvPGonv0YOHtGI4k2R4kPXKWK9vxkPh2KkGzokJw\nFQIDAQAB\n-----END PUBLIC KEY-----\n";
const RSA_CERT: &str = "-----BEGIN CERTIFICATE-----\nMIICpjCCAY6gAwIBAgIEASNFZzANBgkqhkiG9w0BAQsFADAVMRMwEQYDVQQDDApn\nYW50cnktcnNhMB4XDTI0MDEwMTAwMDAwMFoXDTM0MDEwMTAwMDAwMFowFTETMBEG\nA1UEAwwKZ2FudHJ5LXJzYTCCASIwDQYJKoZIhvcNAQEBBQADggEPADCCAQoCggEB\nAM5YzKZhVGTNLgcP3Z8WxxtWaFdm/p4VxMMAO0mFWuwMZpViL3VvHaXvkrnRqNyS\nLz+bAGkRhuykMDUTlBbrhpMwirz9MFIzecthSxMaDEYesqGNeukctUbEzyntfwob\n8wZCi0+GzW7DHXHIlKDgUefwEYMjmJ90pUKeAaYDYdGJRywht2tHkirUXzLA1c0B\nS2+JIppO4j3AplGW7lvBtBIA7DjMFFW+K3c21mfAwwFnb4SbUB9Mb13xgukV0zSP\nyb43AR8kYYBmuNgIvEyKxn/OxpUXQcvg7ocEqsQXLh1pnL7zxqJ79GDh7RiOJNke\nJD1ylivb8ZD4dipBs6JCcBUCAwEAATANBgkqhkiG9w0BAQsFAAOCAQEAZ62g68B2\n1VrbyEoeDwzjT7Zi8RmsMbeYJwa6OehwN5NzT56D4nFHZTpjH5bmHiuFybYlutO/\nPEY4bzPERDzFrmPH9d8/Fu9C8QvQxcU9UTYnf4CAmEenF3LIAm9VxP31mMcL30gg\nU5dlndHXAu/+gddmnAaQ9atajeIWWRFeUi/bxAXpHYUEpvSIRKgr63yCtLZun+TC\nDrhz4NxqdsasvJJ4UL1aZyRzZ590f2FDMTB7eBsaLVGxO1qXJfqFP5DMbO4Xz2ho\n1ULmYIXyj0i4KND8MBjRtO11YWDpGEs/1T6Jg/TH/Xut02JVFEuyz5jPyRWqL6Bx\n/GoR5zkBBFRUaw==\n-----END CERTIFICATE-----\n";
const RSA_JWK: &str = "{\"kty\": \"RSA\", \"n\": \"zljMpmFUZM0uBw_dnxbHG1ZoV2b-nhXEwwA7SYVa7AxmlWIvdW8dpe-SudGo3JIvP5sAaRGG7KQwNROUFuuGkzCKvP0wUjN5y2FLExoMRh6yoY166Ry1RsTPKe1_ChvzBkKLT4bNbsMdcciUoOBR5_ARgyOYn3SlQp4BpgNh0YlHLCG3a0eSKtRfMsDVzQFLb4kimk7iPcCmUZbuW8G0EgDsOMwUVb4rdzbWZ8DDAWdvhJtQH0xvXfGC6RXTNI_JvjcBHyRhgGa42Ai8TIrGf87GlRdBy-DuhwSqxBcuHWmcvvPGonv0YOHtGI4k2R4kPXKWK9vxkPh2KkGzokJwFQ\", \"e\": \"AQAB\"}";
const RSA_JWKS: &str = "{\"keys\": [{\"kty\": \"RSA\", \"n\": \"m7xQP0Bk9z_zM-LGeeYLAoxx5ZX4w_Ndls0iL4AVatJmglZKdxqnSD4JV9iKEXhFuaggKf8MQH5gNSc416gHQ5FHPKLoLzfUw_T3VbXlyvBknqC0TvwqQN6_HjRDq4J1JD5riU_7vgc87_Xd7mWlgjyQKEtkel7fGUZ-YS2GKGOJohdqtBukw2ugkKUI0mqr-0_nghcHHj4I9UIJorVChbBLYYklHy4MTzKeClQE_x_jNs9H6lf__ohMQYM_H84LexlKAV91c09I-9IxYNUkzCERHKzKXKm0rnF5tgI6hpq-yUWTOIxSbK5zLTqwjG2rhW-u_im7fpinPdD1NmdP_w\", \"e\": \"AQAB\", \"kid\": \"old\", \"alg\": \"RS256\"}, {\"kty\": \"RSA\", \"n\": \"zljMpmFUZM0uBw_dnxbHG1ZoV2b-nhXEwwA7SYVa7AxmlWIvdW8dpe-SudGo3JIvP5sAaRGG7KQwNROUFuuGkzCKvP0wUjN5y2FLExoMRh6yoY166Ry1RsTPKe1_ChvzBkKLT4bNbsMdcciUoOBR5_ARgyOYn3SlQp4BpgNh0YlHLCG3a0eSKtRfMsDVzQFLb4kimk7iPcCmUZbuW8G0EgDsOMwUVb4rdzbWZ8DDAWdvhJtQH0xvXfGC6RXTNI_JvjcBHyRhgGa42Ai8TIrGf87GlRdBy-DuhwSqxBcuHWmcvvPGonv0YOHtGI4k2R4kPXKWK9vxkPh2KkGzokJwFQ\", \"e\": \"AQAB\", \"kid\": \"k1\", \"alg\": \"RS256\"}, {\"kty\": \"EC\", \"crv\": \"P-384\", \"x\": \"kgaMTeEE78cCTntc0iOK6FquYHJxq-WJajeYPO0ripkVVihRSILKr_TMZvh3ya_1\", \"y\": \"SxMGAc78EQoJjieiM6z3Nh9bjVZwMAT5jf3UFTCSvOioqf_svFqJKXxes1Kfy5p1\", \"kid\": \"ec\", \"alg\": \"ES384\"}]}";
const OTHER_RSA_PEM: &str = "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAm7xQP0Bk9z/zM+LGeeYL\nAoxx5ZX4w/Ndls0iL4AVatJmglZKdxqnSD4JV9iKEXhFuaggKf8MQH5gNSc416gH\nQ5FHPKLoLzfUw/T3VbXlyvBknqC0TvwqQN6/HjRDq4J1JD5riU/7vgc87/Xd7mWl\ngjyQKEtkel7fGUZ+YS2GKGOJohdqtBukw2ugkKUI0mqr+0/nghcHHj4I9UIJorVC\nhbBLYYklHy4MTzKeClQE/x/jNs9H6lf//ohMQYM/H84LexlKAV91c09I+9IxYNUk\nzCERHKzKXKm0rnF5tgI6hpq+yUWTOIxSbK5zLTqwjG2rhW+u/im7fpinPdD1NmdP\n/wIDAQAB\n-----END PUBLIC KEY-----\n";
const RS256: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJnYW50cnkiLCJleHAiOjIwMDAwMDAwMDAsIm5iZiI6MTUwMDAwMDAwMCwic3ViIjoiYWxpY2UifQ.mhW9BrrxrMGwVRPwbkkPg723nccWEdsK-rk73ZJJ-ex7oqTnI0nfe-TgqZSOq0LG_4hyuCwsj09_pLzdBYKKxd0D96Qb9goNoHMr8p7f_nS3TDeBFh2b163Io_A_C4y0AUxRVnJ0CAQ0FSM15hSxj-QoGh1bmy0npbUJCvqyTAI5OzkXr1YHt-QnaPRdbsz4Pzoygfb3h8IKtGrLc3zTarq1k5zLPpNZE0hrWnvkSI9gMLsBOGmdGSXk1rpaqi2_Fm6QsXNUDtz33Cz7dfQV8WlYeQVzSvNf30z3_bNGhcdlQVsAY9NqUSDizGiaCZGyk5QEXxaNjVFkTc3FB18zig";
const RS384: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzM4NCJ9.eyJpc3MiOiJnYW50cnkiLCJleHAiOjIwMDAwMDAwMDAsIm5iZiI6MTUwMDAwMDAwMCwic3ViIjoiYWxpY2UifQ.m9nsHu74CY3hxSSmBhDnJKs535bZtMH7crAIOiKRfHuRhY5KTUliet4DdZGD0q8WBD3lfL-T8TH9iwEfxApgsERurmDad2NReOXXK4PXbNKrbqze2sIjeIeAws0uNW2-BbazDDfZkijm4rVV5TUqqOqGCLBvEV3jOT25KXEMwoZMa9Tm9R7WQh3bA5bSQeP8Ui7F45IiR0mvu6Tjac_-tI19hAalMmowMWXgiJgb4mkv2YeRk0Ia_5x4Koerm0aKqeMKurbjdUK7M8PKZp5wxdR13KJFkcC9y2Q5HeBnBGd3UPHUHZxYUw9ovVLqvdJ_LvJYuXXsoVSzE8Ff9Wv3bw";
const RS512: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzUxMiJ9.eyJpc3MiOiJnYW50cnkiLCJleHAiOjIwMDAwMDAwMDAsIm5iZiI6MTUwMDAwMDAwMCwic3ViIjoiYWxpY2UifQ.RJ1OEL3pegqYLfwHAaM15OfzFD_pPvVbSF-rjvWF9Iaj-YBBnjnSO7rIB4oyM7FuCpdpM5MMT3QofMiIaPaq9UMVh44N6nkaeFvQxZCZHzHKjhL90czQHiuF0p9lYkfFbYMbZhE18YOwGn3GgW0qWcU5HCEXCKODeS-2DM4qt-wo5kjyaJL3pn8CmiLKAIm_luA82aSiGNlsl69SdYafHOf4Z-8GJOdUHRGvA7vDDMf8BKWXgrj7AmUaLYrvCmk-GApJM3_IA8ZqBhsT_WrOjqY7pkZwMfaxlHxRZXonnP7cjhYDSlXAaMXnL2WIwm4c3Vua2q3eOSnMU58v9cqjgQ";
const PS256: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJQUzI1NiJ9.eyJpc3MiOiJnYW50cnkiLCJleHAiOjIwMDAwMDAwMDAsIm5iZiI6MTUwMDAwMDAwMCwic3ViIjoiYWxpY2UifQ.YXe1ESjHCC-tDlCN-S8STX6i6dVySd36jBfEa0m0XEa4fSI--INpHx8hCCPJm1LRwK35GdkyCff_CGcaHhCxfha7H73Tjq5kAwIpH5_0WApEy_8-FQImt_Da7Z6P58GrAGmMquuW0-i4Y6-WhRUD1Cmv3jh_D7pwCU3fryGem7Q93-2LNO6gXOhs0YuYws-9C4kkiLSN6f_D9SaGrh0KELwSN-sMC3_waSfOQS_nHbqtGvuiXg7ZpYWATE77FV-SxAOvQRxvcDnNMnOlOMThryNUQpBgdbDXJp-vxANFoqLgX3oojIpiBmCT0BmTML90iyQ1V1fVTFPsTZ1hcHJoZA";
const PS384: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJQUzM4NCJ9.eyJpc3MiOiJnYW50cnkiLCJleHAiOjIwMDAwMDAwMDAsIm5iZiI6MTUwMDAwMDAwMCwic3ViIjoiYWxpY2UifQ.sc7L5uSMcCe7vuhsFMboTvPWcTh_xHPK8PGXXcCMI_ZSX9yhrzHK_BgApfuqu8dkNaAxqrzrCEV41J9HCU8S9kG9n37C9Ml815Odg_nXR8HxI14Nl3G8lQYkvpgSSAlelCG2X84t9LlXKuiyLyV1j6f59dfNFTPPSQhzUFg-GYEXxLYk88cWBrB0AYHGp1fDA7wMRmZirV53Gqs4UyDr5I3G122g1Qt5fbhvHVp0-UU25lGlqwhRGSgGz_bXPhjLED8DSWc6x4Fd1jz2MjBNW_PJqd0-ge2UR6H6GiNG6H1TqtUjA_zJovMK1rAXGOMG8ZMMLt77cJM8N0bcy0JHQA";
const PS512: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJQUzUxMiJ9.eyJpc3MiOiJnYW50cnkiLCJleHAiOjIwMDAwMDAwMDAsIm5iZiI6MTUwMDAwMDAwMCwic3ViIjoiYWxpY2UifQ.wf0O7TTP7f7syif67g2JmAbTT6Qe6doTYWABE__wOfwU6ublYlKYDsXm9fxiLLn2WoDSCCiPoUHDWbhvareUBdF6yP7k_JefrhtRL5ROJvptdd2rLs2OGJS76taZiGk4qIQ4EaII02aSXrQ2QG6d06l3bWh6VJXEXDDXm4qILQTwFNbdm__d6Tan4eJ3AAkyMS4UjP9gS407i1MlAfWKVJNb9Xtl5TObQ4KUfqrc9txQk-hE5_dvpYFJxPoGAq1ttbUumUGFNrQ4XGSQD2Y4438kdovx6cnkO-TmXLg-35YvcxXjpxjwyswkeORFh7AEMZe383hGMmCg9JsZ_l1OQQ";
const PS256_MAX_SALT: &str = "eyJhbGciOiJQUzI1NiJ9.eyJpc3MiOiJnYW50cnkiLCJleHAiOjIwMDAwMDAwMDAsIm5iZiI6MTUwMDAwMDAwMCwic3ViIjoiYWxpY2UifQ.CyB740sgC0q-xY8V3eh7EFhstZ0jKeVWqVUD--oTjIF0buiPCKyHrSzaDeCT6P805iga6l8wmPeIsBtQpc_VzgDRCCn8RIcU8hC6LJ7iBJNPuGMtpUnrBTJOniDyTismBeT3JAp-W8nHidygdCdZsf0PzGJD6M8GPPXv2gnwwbztOnYLp9DYr7qPYCzZrDdHfsAwq_UO3RT0g50pVUlPsQBeWvt0LHbAsmx6dcNLCXWnZASTRnWGAr9Mp3a3Mudavehjk5R47GWtEZxQm4lQXpX1adeq_aA7uqOOJ7pcDWgsCd1hCHe8nDqqT0_7FyibyhXNeUfPQ_jdOhtPju5VgA";
const RS256_KID: &str = "eyJraWQiOiJrMSIsImFsZyI6IlJTMjU2In0.eyJpc3MiOiJnYW50cnkiLCJleHAiOjIwMDAwMDAwMDAsIm5iZiI6MTUwMDAwMDAwMCwic3ViIjoiYWxpY2UifQ.vSvnw4sFSLUc4USzWm-gLLiCGh99mtc-6TflOBvr42ql4ZuwNQphnLMFS9dm1lrtdQ7zi6QncfryUXYhfLBnx4yvwhBfgaSoLgEW0N9NJ7jJczB023XeK25VID8jLbL5FN9PAYXqDqYLRcUqJoZGF7GKkGe6KVqUQxfqqo6Dpfs0ZorwLBKmLsO1ClCnCZW-H-Fa4_c5mqNGOUeqBF8-o-WAMahUcxxlmrfz5lL8S0BXMdYHopbdtFdNI_NkW3LuIcA_b9DiY5eEwtNIXtMd-d7z0XanZL6YNgzI4tsKGlbkACAO6pBzMKez7gYMc_V8nWWh-d4ES8bcudamBMkMcA";
const RS256_KID_OLD: &str = "eyJraWQiOiJvbGQiLCJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJnYW50cnkiLCJleHAiOjIwMDAwMDAwMDAsIm5iZiI6MTUwMDAwMDAwMCwic3ViIjoiYWxpY2UifQ.guEdEHq5ebH69_6YhVQq_rRD-nLi9Ly-2mPZ8txfae6DUfCkMP2-iH7wbjIB_G9KMEXAJL4lNZYLp8xFNHZ-Z4lKtCJj_93RPgPspA214OshcKtYNCsjFOeYoXW7OIYEHfcKvv3Xsnv97rHIUnGQ-vREXRGWcMeAR7OWZGDXetF_kmw6qDS6CijKQVUfx0jpQHr_6J0zFQaHfvEapXcgt5YCS5L-J1bCckzOOJkrRE_nNLFTVEfTTw40MVPDzYOvHIh9QhsWAGkiDW0ecVKV65yY8nG1-KBd3DONJ__sJjNDkG724ORoV-msaPejiZnRb8G6JGhuDEDOS2cp-WmK5w";
const RS256_EXPIRED: &str = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJnYW50cnkiLCJleHAiOjE2MDAwMDAwMDAsInN1YiI6ImFsaWNlIn0.pGrC5FoLnYeZV20-lprZ-d-OKfJ4xVFp-SDk0Fjx-Gvq_FEolK7I--O8OJs0wq3kpiheCTtDn02b3eEEpSkNAf9_O7QohbJAHU9cgAUX0vdhU8av2C9D7ldnebYEUa_zYFENNMgc8fO2ZX0b0lfB5UoCHQGsxmbQ2EEZvOLes7f9eY-4LQDyd9P4hOWi2s1SEqgdy49xMAXmsX9gabGkvr2sLV0rpugLiChfG2em6ITdpaYFu1J2l4use3nNpojHY_AFJb5_N_lfG1oxTUjqIIegekZfKmt3L_bc-hr1gi3sP6gFEqAinbQP9S2cfiyjxVXo8Kd46ADKLPkUWD7_nQ";
const RS256_FORGED: &str = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJnYW50cnkiLCJleHAiOjIwMDAwMDAwMDAsIm5iZiI6MTUwMDAwMDAwMCwic3ViIjoiYWxpY2UifQ.kTd6_JhPsPRoOhqhbNH-Tc9sqqjvKOVQM1PQIQvUH0MlKZvFZcjxjcboe7D_5Kt2Fj_eyLue9keFk8N-C01suC0UUVCrX1Us_-Rgp6R-_-6PyNojAlFPcnei7itqOfyyrBxTYwkKxdS3ZUq4TqDd88ukvB8tHV8E4CleS-eqxLEZEaz1OMnkZ3t8VN8o4NWDB5uu3CMCxujhK3D1Ld8Z3AdNDqFnLq--l9XbWvpxcgXO1y9LtC4eScFGzzmzgHdtj5hyo8JAVZz3VIc_4DY9Xz9ID-DSdxn-bo3GGcja7F8VNnEkHb7eIbbqRSy_T5B56a077QJxkcyYNa2lchWRQA";
const ES384_PEM: &str = "-----BEGIN PUBLIC KEY-----\nMHYwEAYHKoZIzj0CAQYFK4EEACIDYgAEkgaMTeEE78cCTntc0iOK6FquYHJxq+WJ\najeYPO0ripkVVihRSILKr/TMZvh3ya/1SxMGAc78EQoJjieiM6z3Nh9bjVZwMAT5\njf3UFTCSvOioqf/svFqJKXxes1Kfy5p1\n-----END PUBLIC KEY-----\n";
const ES384_JWK: &str = "{\"kty\": \"EC\", \"crv\": \"P-384\", \"x\": \"kgaMTeEE78cCTntc0iOK6FquYHJxq-WJajeYPO0ripkVVihRSILKr_TMZvh3ya_1\", \"y\": \"SxMGAc78EQoJjieiM6z3Nh9bjVZwMAT5jf3UFTCSvOioqf_svFqJKXxes1Kfy5p1\"}";
const ES384: &str = "eyJhbGciOiJFUzM4NCJ9.eyJpc3MiOiJnYW50cnkiLCJleHAiOjIwMDAwMDAwMDAsIm5iZiI6MTUwMDAwMDAwMCwic3ViIjoiYWxpY2UifQ.Ou1_Psm99WA-AGTD9UE3MQAD7r_Q3i2IJ_qF2_fMnM2_3YfIAzgadXWfDAHNVnDJvT-zVdYNCkvMyo5Pn9-HhP50Eu3wOt_8tZU7e2dN0UsSUGNzgOawr_6PDWAIFDFt";
const ES512_PEM: &str = "-----BEGIN PUBLIC KEY-----\nMIGbMBAGByqGSM49AgEGBSuBBAAjA4GGAAQAsaOEGfRY2VYmPWEELLNuBs6wFzxq\n9Y8UOEBnK09BLtBht2mavER0iDGj+WTq1TtJIEdaif8wQXpXa2m9bsvOco0ATU26\no7kxwQDHRhpfLO2aQx64kCtUjlR7leo0yT39YP+yq3aKLoeYiKgwUf106qV+x1cS\nsd2ZullvWacYQIFQZuw=\n-----END PUBLIC KEY-----\n";
const ES512_JWK: &str = "{\"kty\": \"EC\", \"crv\": \"P-521\", \"x\": \"ALGjhBn0WNlWJj1hBCyzbgbOsBc8avWPFDhAZytPQS7QYbdpmrxEdIgxo_lk6tU7SSBHWon_MEF6V2tpvW7LznKN\", \"y\": \"AE1NuqO5McEAx0YaXyztmkMeuJArVI5Ue5XqNMk9_WD_sqt2ii6HmIioMFH9dOqlfsdXErHdmbpZb1mnGECBUGbs\"}";
const ES512: &str = "eyJhbGciOiJFUzUxMiJ9.eyJpc3MiOiJnYW50cnkiLCJleHAiOjIwMDAwMDAwMDAsIm5iZiI6MTUwMDAwMDAwMCwic3ViIjoiYWxpY2UifQ.AEEWgpiYEczt7ZeDQPxk1pvRbe7U5GWLudcVIVRmVCnHvdwygQWTUZ3GJQIz25WLCVgYXOv1IGsVB2sJR5X9Gyg6AOXgFYyKHca-4K9T_u_4M-mIO8COgwjTykxPuUz2k5fTvEoG7DY1T1z4jFZoWQqR6rR-VT5Y4NB8yz8QU59ES8z4";
const ES256_PEM: &str = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEu7R6cZmOhHLQf0XYlAzJa3y2UZ+M\nqsPVzXsR42sHFaSceQTZdycFQqAmd4ssuccOY0zGp3S4jPoQ70MuNoN/2A==\n-----END PUBLIC KEY-----\n";
const ES256_CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIBFjCBvqADAgECAgQBI0VnMAoGCCqGSM49BAMCMBQxEjAQBgNVBAMMCWdhbnRy\neS1lYzAeFw0yNDAxMDEwMDAwMDBaFw0zNDAxMDEwMDAwMDBaMBQxEjAQBgNVBAMM\nCWdhbnRyeS1lYzBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABLu0enGZjoRy0H9F\n2JQMyWt8tlGfjKrD1c17EeNrBxWknHkE2XcnBUKgJneLLLnHDmNMxqd0uIz6EO9D\nLjaDf9gwCgYIKoZIzj0EAwIDRwAwRAIgFoA0VvxWx6/76EOkS7q7dMHN0fbPQA5p\nZZpavMMROgkCID5YSDEx+YE1x0eDC0gu52zl/76DdoAFHWR9ea1eIzgd\n-----END CERTIFICATE-----\n";
const ES256: &str = "eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJnYW50cnkiLCJleHAiOjIwMDAwMDAwMDAsIm5iZiI6MTUwMDAwMDAwMCwic3ViIjoiYWxpY2UifQ.cHTE-ICB8_fd9W9kneX-YBbxpPYnFgFjQCwcH8p2OOz3RfMgMFt2ZKOiCarCmSNFZX1b5lwFDq7P53mlRWy1Vg";
const P224_PEM: &str = "-----BEGIN PUBLIC KEY-----\nME4wEAYHKoZIzj0CAQYFK4EEACEDOgAE1nKskg/m7atkK+KEuVkhJfbTK8cm8xql\n9AvcF6wetQCsQekYE00N5inxLCaf3GAzTvI5Kyrup5E=\n-----END PUBLIC KEY-----\n";
const ES256_P224: &str = "eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJnYW50cnkiLCJleHAiOjIwMDAwMDAwMDAsIm5iZiI6MTUwMDAwMDAwMCwic3ViIjoiYWxpY2UifQ.JRh1GDIoy9pNRWj2wkO_psfPhX6LmkOWIusChJWbVaQZickQcf7Qg3i1lZGONoyHf0i5Opaltsg";
const ED_PEM: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEALY3efZqKZJ9JVTqFGHQKC0zYlXmWhq9EnNxSddca9nI=\n-----END PUBLIC KEY-----\n";
const ED_CERT: &str = "-----BEGIN CERTIFICATE-----\nMIHXMIGKoAMCAQICBAEjRWcwBQYDK2VwMBQxEjAQBgNVBAMMCWdhbnRyeS1lZDAe\nFw0yNDAxMDEwMDAwMDBaFw0zNDAxMDEwMDAwMDBaMBQxEjAQBgNVBAMMCWdhbnRy\neS1lZDAqMAUGAytlcAMhAC2N3n2aimSfSVU6hRh0CgtM2JV5loavRJzcUnXXGvZy\nMAUGAytlcANBAMMzUcTG9Nl7JOTw6HKvCOqtHuAYPToP0fs47VBf+BRC5oqvRsW3\n9VIQy/GB3U6aNcbYGvvDtlDWxklS+L8emQk=\n-----END CERTIFICATE-----\n";
const EDDSA: &str = "eyJhbGciOiJFZERTQSJ9.eyJpc3MiOiJnYW50cnkiLCJleHAiOjIwMDAwMDAwMDAsIm5iZiI6MTUwMDAwMDAwMCwic3ViIjoiYWxpY2UifQ.om9yuZ-dX0-nDq6jd5JeiOgDO8l0hEq6KqSMYmkfqC_Q8FJX4IBNzZMwpJgfTGxLR2-75G6fG4DlhkYyJ9j_Aw";
const A2_PEM: &str = "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAofgWCuLjybRlzo0tZWJj\nNiuSfb4p4fAkd/wWJcyQoTbji9k0l8W26mPddxHmfHQp+Vaw+4qPCJrcS2mJPMEz\nP1Pt0Bm4d4QlL+yRT+SFd2lZS+pCgNMsD1W/YpRPEwOWvG6b32690r2jZ47soMZo\n9wGzjb/7OMg0LOL+bSf63kpaSHSXndS5z5rexMdbBYUsLA9e+KXBdQOS+UTo7WTB\nEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6/I5IhlJH7aGhyxX\nFvUK+DWNmoudF8NAco9/h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXp\noQIDAQAB\n-----END PUBLIC KEY-----\n";
const A3_PEM: &str = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEf83OJ3D2xF1Bg8vub9tLe1gHMzV7\n6e8Tus9uPHvRVEXH8UTNG72bfocs3+257rn0s2ldbqkLJK2KRiMohYjlrQ==\n-----END PUBLIC KEY-----\n";
const SMALL_RSA_PEM: &str = "-----BEGIN PUBLIC KEY-----\nMFwwDQYJKoZIhvcNAQEBBQADSwAwSAJBAOsjJEIkPGwSgkL/tjDn7Qg3ntJMDuyc\nhqeqzySA3aAXvI1yXU9Egg0yt3AjvKr4CWROkX9x4WKTZ9EkzarG0rMCAwEAAQ==\n-----END PUBLIC KEY-----\n";
const RS256_SMALL: &str = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJnYW50cnkiLCJleHAiOjIwMDAwMDAwMDAsIm5iZiI6MTUwMDAwMDAwMCwic3ViIjoiYWxpY2UifQ.Xc2xPU8nC_I6Sb2Lho8MSmYr1dUBJfGPTWDS2ddIBgLt7so94xi1pmBKlLv_UC-BS97VRMK4Zi_KZyNAOyGJWQ";

/// HS512, secret `secret` (Python's hmac).
const HS512_SECRET: &str = "eyJhbGciOiJIUzUxMiJ9.eyJzdWIiOiJjYXJvbCJ9.5tBS6Lg_IINNMhTxFrzCzbD80edXrLoN9jl-_VUngBKWoWzWsY7JUWUefRMrwBkkNWtgyc4ogab93-t_C8dgKA";

fn strict(message: String) -> anyhow::Result<Value> {
    Err(anyhow::Error::msg(message))
}

fn lenient(_: String) -> anyhow::Result<Value> {
    Ok(Value::Undefined)
}

type Builtin = fn(fn(String) -> anyhow::Result<Value>) -> Box<dyn regorus::Extension>;

/// The builtin's answer (strict: an error is `Err`).
fn call(builtin: Builtin, jwt: &str, cert: &str) -> Result<Value, String> {
    let mut f = builtin(strict);
    f(alloc::vec![Value::from(jwt), Value::from(cert)]).map_err(|e| e.to_string())
}

fn verifies(builtin: Builtin, jwt: &str, cert: &str) -> bool {
    match call(builtin, jwt, cert) {
        Ok(Value::Bool(b)) => b,
        other => panic!("{other:?}: {jwt} under {cert}"),
    }
}

/// The token with one bit of its signature flipped (the last byte's top bit).
fn flipped(jwt: &str) -> String {
    let (signed, sig) = jwt.rsplit_once('.').unwrap();
    let mut bytes = base64url(sig).unwrap();
    *bytes.last_mut().unwrap() ^= 0x80;
    format!("{signed}.{}", b64(&bytes))
}

/// Unpadded base64url.
fn b64(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let mut b = [0u8; 3];
        b[..chunk.len()].copy_from_slice(chunk);
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(char::from(DIGITS[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

#[test]
fn the_rfc_7515_and_8037_examples_verify() {
    assert!(verifies(verify_rs256, RFC7515_A2, RFC7515_A2_JWK));
    assert!(verifies(verify_rs256, RFC7515_A2, A2_PEM));
    assert!(!verifies(
        verify_rs256,
        &flipped(RFC7515_A2),
        RFC7515_A2_JWK
    ));
    assert!(verifies(verify_es256, RFC7515_A3, RFC7515_A3_JWK));
    assert!(verifies(verify_es256, RFC7515_A3, A3_PEM));
    assert!(!verifies(verify_es256, &flipped(RFC7515_A3), A3_PEM));
    assert!(verifies(verify_eddsa, RFC8037_A4, RFC8037_A4_JWK));
    assert!(!verifies(
        verify_eddsa,
        &flipped(RFC8037_A4),
        RFC8037_A4_JWK
    ));
    // Another key, another algorithm's builtin, a key of another type.
    assert!(!verifies(verify_rs256, RFC7515_A2, OTHER_RSA_PEM));
    assert!(!verifies(verify_rs384, RFC7515_A2, RFC7515_A2_JWK));
    assert!(!verifies(verify_ps256, RFC7515_A2, RFC7515_A2_JWK));
    assert!(!verifies(verify_es256, RFC7515_A2, RFC7515_A3_JWK));
    assert!(!verifies(verify_rs256, RFC7515_A3, RFC7515_A3_JWK));
    assert!(!verifies(verify_es256, RFC7515_A3, RFC7515_A2_JWK));
    assert!(!verifies(verify_eddsa, RFC8037_A4, RFC7515_A3_JWK));
    assert!(!verifies(verify_es256, RFC8037_A4, RFC8037_A4_JWK));
}

#[test]
fn rsa_tokens_verify_under_their_key_in_each_form() {
    let rsa: [(Builtin, &str); 6] = [
        (verify_rs256, RS256),
        (verify_rs384, RS384),
        (verify_rs512, RS512),
        (verify_ps256, PS256),
        (verify_ps384, PS384),
        (verify_ps512, PS512),
    ];
    for (i, (builtin, token)) in rsa.iter().enumerate() {
        for key in [RSA_PEM, RSA_CERT, RSA_JWK] {
            assert!(verifies(*builtin, token, key), "{token} under {key}");
        }
        // The set's RSA keys say `RS256`: a token of another `alg` skips them.
        assert_eq!(verifies(*builtin, token, RSA_JWKS), i == 0, "{token}");
        assert!(!verifies(*builtin, &flipped(token), RSA_PEM), "{token}");
        assert!(!verifies(*builtin, token, OTHER_RSA_PEM), "{token}");
        // Key of another type; the builtin of another algorithm.
        assert!(!verifies(*builtin, token, ES256_PEM), "{token}");
        assert!(!verifies(*builtin, token, ED_PEM), "{token}");
        assert!(!verifies(verify_es256, token, RSA_PEM), "{token}");
        let other = rsa[(i + 1) % 6].0;
        assert!(!verifies(other, token, RSA_PEM), "{token}");
    }
}

#[test]
fn ecdsa_and_eddsa_tokens_verify_under_their_key_in_each_form() {
    let cases: [(Builtin, &str, &[&str]); 4] = [
        (verify_es256, ES256, &[ES256_PEM, ES256_CERT]),
        (verify_es384, ES384, &[ES384_PEM, ES384_JWK, RSA_JWKS]),
        (verify_es512, ES512, &[ES512_PEM, ES512_JWK]),
        (verify_eddsa, EDDSA, &[ED_PEM, ED_CERT]),
    ];
    for (builtin, token, keys) in cases {
        for key in keys {
            assert!(verifies(builtin, token, key), "{token} under {key}");
            assert!(
                !verifies(builtin, &flipped(token), key),
                "{token} under {key}"
            );
        }
        assert!(!verifies(builtin, token, RSA_PEM), "{token}");
        assert!(!verifies(builtin, token, A3_PEM), "{token}");
        assert!(!verifies(verify_rs256, token, keys[0]), "{token}");
        assert!(!verifies(verify_ps256, token, keys[0]), "{token}");
    }
    // The hash is the builtin's: an ES384 token is no ES512 one under the same key.
    assert!(!verifies(verify_es512, ES384, ES384_PEM));
    assert!(!verifies(verify_es256, ES512, ES512_PEM));
}

/// OPA's `verifyES` splits the signature in two halves of any length; jwx's (for
/// `decode_verify`) wants exactly twice the curve's size.
#[test]
fn ecdsa_signatures_are_split_as_opa_and_jwx_split_them() {
    let (signed, sig) = ES256.rsplit_once('.').unwrap();
    let sig = base64url(sig).unwrap();
    let mut padded = alloc::vec![0u8];
    padded.extend_from_slice(&sig[..32]);
    padded.push(0);
    padded.extend_from_slice(&sig[32..]);
    let long = format!("{signed}.{}", b64(&padded));
    assert!(verifies(verify_es256, &long, ES256_PEM));
    let constraints = format!(
        r#"{{"cert": {}, "time": 1700000000000000000}}"#,
        quoted(ES256_PEM)
    );
    assert!(verified(ES256, &constraints));
    assert!(!verified(&long, &constraints));
    // An empty signature, or one of halves out of range, is no signature.
    assert!(!verifies(verify_es256, &format!("{signed}."), ES256_PEM));
    let zeros = format!("{signed}.{}", b64(&[0u8; 64]));
    assert!(!verifies(verify_es256, &zeros, ES256_PEM));
}

/// Go's `VerifyPSS` with no options (OPA's `verify_ps*`) reads the salt's length from the
/// signature; jwx's wants it as long as the hash.
#[test]
fn pss_salts_are_read_as_opa_and_jwx_read_them() {
    assert!(verifies(verify_ps256, PS256_MAX_SALT, RSA_PEM));
    let constraints = format!(
        r#"{{"cert": {}, "time": 1700000000000000000}}"#,
        quoted(RSA_PEM)
    );
    assert!(verified(PS256, &constraints));
    assert!(!verified(PS256_MAX_SALT, &constraints));
}

/// A token's `kid` picks the key of that `kid` alone; else the keys whose `alg` is the token's
/// are tried in turn.
#[test]
fn a_jwk_sets_kid_and_alg_choose_the_keys_tried() {
    assert!(verifies(verify_rs256, RS256_KID, RSA_JWKS));
    // `old` is the other key: no other is tried.
    assert!(!verifies(verify_rs256, RS256_KID_OLD, RSA_JWKS));
    // A `kid` no key has: each key is tried.
    assert!(verifies(verify_rs256, RS256, RSA_JWKS));
    // The set's RSA keys are `RS256` ones: a PS256 token's `alg` skips them.
    assert!(!verifies(verify_ps256, PS256, RSA_JWKS));
    let set = |alg: &str| RSA_JWK.replacen('{', &format!(r#"{{"alg":"{alg}","#), 1);
    assert!(verifies(verify_rs256, RS256, &set("RS256")));
    assert!(!verifies(verify_rs256, RS256, &set("RS384")));
    // A key-encryption `alg` leaves the key out; one jwx does not know is an error.
    assert!(!verifies(verify_rs256, RS256, &set("RSA-OAEP")));
    assert!(call(verify_rs256, RS256, &set("RS999")).is_err());
    // `keys` empty or null: no key, nothing verifies.
    assert!(!verifies(verify_rs256, RS256, r#"{"keys": []}"#));
    assert!(!verifies(verify_rs256, RS256, r#"{"keys": null}"#));
    // An `oct` key verifies no RSA token (it is an HMAC secret).
    assert!(!verifies(
        verify_rs256,
        RS256,
        r#"{"kty":"oct","k":"c2VjcmV0"}"#
    ));
}

#[test]
fn pem_text_is_read_as_go_reads_it() {
    // Text before the block is skipped; one line end after it is allowed.
    assert!(verifies(
        verify_rs256,
        RS256,
        &format!("my key:\n{RSA_PEM}")
    ));
    assert!(verifies(verify_rs256, RS256, RSA_PEM.trim_end()));
    assert!(verifies(
        verify_rs256,
        RS256,
        &RSA_PEM.replace('\n', "\r\n")
    ));
    // Headers are ignored; spaces and tabs in the base64 too.
    let headers = RSA_PEM.replacen("-----\n", "-----\nComment: mine\n\n", 1);
    assert!(verifies(verify_rs256, RS256, &headers));
    assert!(verifies(
        verify_rs256,
        RS256,
        &RSA_PEM.replace("\nMII", "\n  MII")
    ));
    let e = |cert: &str| call(verify_rs256, RS256, cert).unwrap_err();
    // Anything after the block, a chain included, is OPA's error.
    assert_eq!(
        e(&format!("{RSA_PEM}\n")),
        "io.jwt.verify_rs256: extra data after a PEM certificate block"
    );
    assert_eq!(
        e(&format!("{RSA_CERT}{ES256_CERT}")),
        "io.jwt.verify_rs256: extra data after a PEM certificate block"
    );
    assert_eq!(
        e(&RSA_PEM.replace("PUBLIC KEY", "RSA PUBLIC KEY")),
        "io.jwt.verify_rs256: failed to extract a Key from the PEM certificate"
    );
    // A block without its end is no PEM: the text is read as JWK.
    assert!(
        e("-----BEGIN CERTIFICATE-----\nMIIB\n")
            .starts_with("io.jwt.verify_rs256: failed to parse a JWK key (set)")
    );
    // A public key whose DER is cut short (the exponent's last byte).
    let cut = RSA_PEM.replace("IDAQAB\n", "IDAQ==\n");
    assert_ne!(cut, RSA_PEM);
    assert!(e(&cut).starts_with("io.jwt.verify_rs256: failed to parse a PEM public key"));
    // Not a string: OPA's type error.
    let mut f = verify_rs256(strict);
    let got = f(alloc::vec![Value::from(RS256), Value::from(1u64)]).unwrap_err();
    assert_eq!(
        got.to_string(),
        "io.jwt.verify_rs256: operand 2 must be string"
    );
}

/// Go's `crypto/rsa` refuses keys under 1,024 bits (since Go 1.24): the signature does not
/// verify, although it is right.
#[test]
fn rsa_keys_go_refuses_verify_nothing() {
    assert!(!verifies(verify_rs256, RS256_SMALL, SMALL_RSA_PEM));
    let keys = keys_of(SMALL_RSA_PEM).unwrap();
    let PublicKey::Rsa(k) = &keys[0].key else {
        panic!("an RSA key")
    };
    assert_eq!(k.n.bits(), 512);
    // An even exponent, one past 2^31 - 1: Go's checks, before any arithmetic.
    let jwk = |e: &str| RSA_JWK.replace(r#""e": "AQAB""#, &format!(r#""e": "{e}""#));
    assert!(verifies(verify_rs256, RS256, &jwk("AQAB")));
    assert!(!verifies(verify_rs256, RS256, &jwk("AQAC")));
    assert!(!verifies(verify_rs256, RS256, &jwk("gAAAAQ")));
    // jwx keeps the exponent's low 64 bits: 2^64 + 65537 is 65537.
    assert!(verifies(verify_rs256, RS256, &jwk("AQAAAAAAAAEAAQ")));
}

/// What Gantry cannot read or verify, where OPA might verify, fails the evaluation whatever the
/// mode; never a `false` a `not` would turn into an allow, nor a `true`.
#[test]
fn what_gantry_cannot_verify_fails_the_evaluation_in_either_mode() {
    let hard = |builtin: Builtin, jwt: &str, cert: &str| {
        let mut f = builtin(lenient);
        let got = f(alloc::vec![Value::from(jwt), Value::from(cert)]);
        assert!(got.is_err(), "{jwt} under {cert}: {got:?}");
    };
    // A P-224 key verifies ES tokens in OPA; it is of the wrong type for RSA ones.
    hard(verify_es256, ES256_P224, P224_PEM);
    assert!(!verifies(verify_rs256, RS256, P224_PEM));
    // A private JWK, a modulus past 16,384 bits, an `alg` newer jwx reads, the standard
    // base64 alphabet, a repeated member, a set past 64 keys, a text past 512 KiB.
    hard(
        verify_rs256,
        RS256,
        &RSA_JWK.replacen('{', r#"{"d":"AQAB","#, 1),
    );
    let huge = alloc::format!(r#"{{"kty":"RSA","e":"AQAB","n":"AQ{}"}}"#, "A".repeat(2732));
    assert!(keys_error(&huge).contains("16393 bits"));
    hard(verify_rs256, RS256, &huge);
    hard(
        verify_eddsa,
        EDDSA,
        &RSA_JWK.replacen('{', r#"{"alg":"Ed25519","#, 1),
    );
    hard(
        verify_rs256,
        RS256,
        &RSA_JWK.replace('-', "+").replace('_', "/"),
    );
    hard(
        verify_rs256,
        RS256,
        &RSA_JWK.replacen('{', r#"{"e":"AQAB","#, 1),
    );
    let many = alloc::format!(r#"{{"keys": [{}]}}"#, [RSA_JWK; 65].join(","));
    hard(verify_rs256, RS256, &many);
    hard(verify_rs256, RS256, &" ".repeat(513 * 1024));
    // Five 16,384-bit keys tried (their exponent even: Go refuses them before any arithmetic)
    // are past one call's bound on verification work; four are within it.
    let big = alloc::format!(
        r#"{{"kty":"RSA","e":"Ag","n":"{}"}}"#,
        "_".repeat(2730) + "8"
    );
    assert!(keys_of(&big).is_ok());
    let set = |n: usize| {
        alloc::format!(
            r#"{{"keys": [{}]}}"#,
            alloc::vec![big.as_str(); n].join(",")
        )
    };
    assert!(!verifies(verify_rs256, RS256, &set(4)));
    hard(verify_rs256, RS256, &set(5));
    // OPA's own errors stay the mode's: undefined when not strict.
    let mut f = verify_rs256(lenient);
    let got = f(alloc::vec![Value::from(RS256), Value::from("not a key")]).unwrap();
    assert_eq!(got, Value::Undefined);
}

fn keys_error(text: &str) -> String {
    match keys_of(text) {
        Err(Error::Hard(e)) => e,
        other => panic!("a hard error, got {other:?}"),
    }
}

fn quoted(s: &str) -> String {
    let mut out = String::from('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn clock() -> Clock {
    Arc::new(|| Ok(1_700_000_000_000_000_000))
}

fn decode_verified(jwt: &str, constraints: &str) -> Result<Value, Error> {
    jwt_decode_verify(
        &Value::from(jwt),
        &crate::json::parse(constraints).unwrap(),
        &clock(),
    )
}

fn verified(jwt: &str, constraints: &str) -> bool {
    match decode_verified(jwt, constraints) {
        Ok(v) => v.as_array().unwrap()[0] == Value::from(true),
        Err(e) => panic!("{jwt} with {constraints}: {e:?}"),
    }
}

#[test]
fn decode_verify_with_a_cert_checks_the_signature_and_the_claims() {
    let cert = |c: &str| format!(r#"{{"cert": {}}}"#, quoted(c));
    assert_eq!(
        decode_verified(RS256, &cert(RSA_CERT)).unwrap(),
        crate::json::parse(
            r#"[true, {"alg":"RS256","typ":"JWT"},
                {"iss":"gantry","exp":2000000000,"nbf":1500000000,"sub":"alice"}]"#
        )
        .unwrap()
    );
    for (token, key) in [
        (RS384, RSA_PEM),
        (RS512, RSA_JWK),
        (PS384, RSA_PEM),
        (PS512, RSA_CERT),
        (ES256, ES256_CERT),
        (ES384, ES384_JWK),
        (ES512, ES512_PEM),
        (EDDSA, ED_PEM),
        (RS256_KID, RSA_JWKS),
    ] {
        assert!(verified(token, &cert(key)), "{token} under {key}");
        assert!(
            !verified(&flipped(token), &cert(key)),
            "{token} under {key}"
        );
        assert!(!verified(token, &cert(OTHER_RSA_PEM)), "{token}");
    }
    // The header's `alg` decides: an RS256 token under an EC key does not verify.
    assert!(!verified(RS256, &cert(ES256_PEM)));
    assert!(!verified(RS256_FORGED, &cert(RSA_PEM)));
    assert!(!verified(RS256_EXPIRED, &cert(RSA_PEM)));
    assert!(!verified(RS256_KID_OLD, &cert(RSA_JWKS)));
    let with = |c: &str, more: &str| format!(r#"{{"cert": {}, {more}}}"#, quoted(c));
    assert!(verified(RS256, &with(RSA_PEM, r#""alg": "RS256""#)));
    assert!(!verified(RS256, &with(RSA_PEM, r#""alg": "PS256""#)));
    assert!(verified(RS256, &with(RSA_PEM, r#""iss": "gantry""#)));
    assert!(!verified(
        RS256,
        &with(RSA_PEM, r#""time": 2000000000000000000"#)
    ));
    // An `oct` JWK is an HMAC secret here (`secret`, base64url).
    let oct = cert(r#"{"kty":"oct","k":"c2VjcmV0"}"#);
    assert!(verified(HS512_SECRET, &oct));
    assert!(!verified(RS256, &oct));
    // Errors as OPA's.
    let e = |c: &str| match decode_verified(RS256, c) {
        Err(Error::Builtin(e)) => e,
        other => panic!("{c}: {other:?}"),
    };
    assert_eq!(
        e(&with(RSA_PEM, r#""secret": "s""#)),
        "duplicate key constraints"
    );
    assert_eq!(e(r#"{"cert": 1}"#), "cert constraint: must be a string");
    assert!(e(r#"{"cert": "x"}"#).starts_with("failed to parse a JWK key (set)"));
    // A JWK set with no key is a key constraint: nothing verifies.
    assert!(!verified(RS256, r#"{"cert": "{\"keys\": []}"}"#));
    // A P-224 key for an ES token: a hard error.
    assert!(matches!(
        decode_verified(ES256_P224, &cert(P224_PEM)),
        Err(Error::Hard(_))
    ));
}

// Another RSA key's certificates (Python's `cryptography`): one with basic constraints, key
// usage, a subject alternative name and key identifier; one whose key usage is a NULL.
const EXT_CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIC/zCCAeegAwIBAgIBBzANBgkqhkiG9w0BAQsFADAVMRMwEQYDVQQDDApnYW50\ncnktZXh0MB4XDTI0MDEwMTAwMDAwMFoXDTM0MDEwMTAwMDAwMFowFTETMBEGA1UE\nAwwKZ2FudHJ5LWV4dDCCASIwDQYJKoZIhvcNAQEBBQADggEPADCCAQoCggEBALtF\n1qCY6+2GUTaFE5OHnreAUd6CF1QkPbIkRCLlMJ17QKyNavjK9obeZNzAkDC+CMDs\nZVTY9IIWc0JFEPWHhSe6IVr95tKmAGt5JFR9dQ0o00MzA+Od8TuXH1vLbqHK+3Xt\n5Mnxo+S53M/1e5iYHitD4iYxnw+m2ZOj0S43umj3/V+xNGUoPliKKLsPi41Fwk1l\nK+EOKZo8vXej6IMVVZC/+kuwprAksLMuKjkhopvT5nTEqObTKBXnCQ62P182Vpgp\nvdS59Q2QHPnPeouqYngnfOMXt/GHkVwNEEXzKkoqUrVX81Yf0R0IezolGJcUphB6\nIM/nVXBDMvxIh4f6cmcCAwEAAaNaMFgwDAYDVR0TAQH/BAIwADAOBgNVHQ8BAf8E\nBAMCB4AwGQYDVR0RBBIwEIIOZ2FudHJ5LmV4YW1wbGUwHQYDVR0OBBYEFBFu2Ywh\nr9JOQpE83DjKvRVd6pyAMA0GCSqGSIb3DQEBCwUAA4IBAQAP0W8OKmql6Niy6ukY\nOxpm8xMIYD4vOPLTP+U3O8Ul0LH6Ze4Vz6DsW4y7lV2QARdaEucT30nEsKVv14AL\n71vcrH6liCIkid3PXLaspB0WhHxayX0CmB/KtiPkW9BC+b8jXqt/1sI1iMK3V+AW\nbWwjqswSjL+pX4RIe/1x2g9sjC7nptkorGvu/HlLiteHqk1W+DJu+yr7pmAWlN6K\nPE+opIqtrRc5+U/zgd4KRbm/HJ/SW448h/qhv7blXPPGbAsIY1AdM+uGDQZyxzrh\np/JT8QFVKngIgTq/2jWVywMafiZWudFKg1OinWryYdVHppSLtFLgu4Ibcyg+deda\nAsPY\n-----END CERTIFICATE-----\n";
const BAD_KEY_USAGE_CERT: &str = "-----BEGIN CERTIFICATE-----\nMIICtTCCAZ2gAwIBAgIBBzANBgkqhkiG9w0BAQsFADAVMRMwEQYDVQQDDApnYW50\ncnktZXh0MB4XDTI0MDEwMTAwMDAwMFoXDTM0MDEwMTAwMDAwMFowFTETMBEGA1UE\nAwwKZ2FudHJ5LWV4dDCCASIwDQYJKoZIhvcNAQEBBQADggEPADCCAQoCggEBALtF\n1qCY6+2GUTaFE5OHnreAUd6CF1QkPbIkRCLlMJ17QKyNavjK9obeZNzAkDC+CMDs\nZVTY9IIWc0JFEPWHhSe6IVr95tKmAGt5JFR9dQ0o00MzA+Od8TuXH1vLbqHK+3Xt\n5Mnxo+S53M/1e5iYHitD4iYxnw+m2ZOj0S43umj3/V+xNGUoPliKKLsPi41Fwk1l\nK+EOKZo8vXej6IMVVZC/+kuwprAksLMuKjkhopvT5nTEqObTKBXnCQ62P182Vpgp\nvdS59Q2QHPnPeouqYngnfOMXt/GHkVwNEEXzKkoqUrVX81Yf0R0IezolGJcUphB6\nIM/nVXBDMvxIh4f6cmcCAwEAAaMQMA4wDAYDVR0PAQH/BAIFADANBgkqhkiG9w0B\nAQsFAAOCAQEAAlG2xuJq1d5MTLcpj5rlmKVdBtBpJDVR1HrXLzV6ARyhgI/H+CDB\nI3a1YrSesBiENQvqsD8w9rEIG0o9pS7OZ9lvMAOPv8afgadFqVfjiDS0B5Z/zg6Y\n91HA+WZBuMsqny6eYbidSuVeUckGC2F+rdfR/tsR7KtqDqi/BBbwvGo9HmUTewfM\nWJKmoiw8IzApDkChDX4BZxZFK18B+NNG4fMZsFhIaezoefSR8oMtol9h0tuUDz1r\nC5T/BIcRIaFu0WEU5HFbwlUdjeK5OH7EZHtsDa2+vJj+0MAj/NSjLChBrxB8sZTQ\nMf2KYmp+VHBnNiBRdvYHzd3iFLoGdVVKMw==\n-----END CERTIFICATE-----\n";
const RS256_EXT: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJleHQifQ.Kbym4F2ge3w9YFQCvi4SvWN6KVfPvxd_691RLqEjv_fnEoZ2QgoAmaxhdEWFl_I9fuIuvfSHoMpg5a7SfBLiRn4az3M4M_Yj-wspUlOfK6feo1C4sGFBWAML21k39zNpUdYdyeUjB47RIRha6w9HKCLNQfb5qZ0t0E5n0Kaq9QYrvDEyEkWtk2wlIshwIYmoq87-xr6KkmyH_cBjaWEaBCn_YbCMkboZ38vuGFM6NoNkqyyiBoiCi14YKmrHza1_NaBiM-934RqDYcdaoEhUBduZ80xeeV9XasS7D6DnEHkPBanGvWKlqK3SAQaXnxicnnKR3Q55xhJpaPwKR5e01g";

/// Go parses a certificate's known extensions and refuses one that does not parse: a key usage
/// that is no bit string fails here too (hard: the x509-cert crate's reading is not Go's).
#[test]
fn certificate_extensions_go_refuses_fail_the_evaluation() {
    assert!(verifies(verify_rs256, RS256_EXT, EXT_CERT));
    assert!(!verifies(verify_rs256, RS256, EXT_CERT));
    let mut f = verify_rs256(lenient);
    let got = f(alloc::vec![
        Value::from(RS256_EXT),
        Value::from(BAD_KEY_USAGE_CERT)
    ]);
    let e = got.unwrap_err().to_string();
    assert!(e.contains("certificate extension 2.5.29.15"), "{e}");
}

// A hostile review's certificates, each around the 2048-bit key `REVIEW_RS256` is signed by (its
// own signature junk: Go does not check it): `REVIEW_CERT` and `PRINTABLE_STAR_CERT` (a `*`,
// which Go allows in a PrintableString) Go reads; each other one Go's `x509.ParseCertificate`
// refuses, so OPA's builtin errors where Gantry took the key and verified the token.
const REVIEW_RS256: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSIsImV4cCI6MjAwMDAwMDAwMH0.BmCvHJqZmddHitbZgMx1b4xRVZBpDz061YXOP5zcgHod5lrsVRpq-lM75r1LzQhy2v6M-BzFJyuJevHbD-TJ2FS_UqjqGZlsKdAnsmO6ghGGszUx2XTqxVysAOL_TcooevFtISo9U17HvnowGFlB0k07XA65MwpshRyil3nDYK62VYr3eYU-IIageVcmbQfLbSBTkGLGxTn6xPze_hGcAd_-Sudzm1QAsiPqXDENU1RWmy3WSvv1iP1odeMNREYT2SXdAXAIzh5Q0DxCTWXaFWU8SNkICF2soLUps7XmCHRFr24jvHgmPNTp4uf1Qw20zph5MMLgi-3oYoHiSkwFVw";
const REVIEW_CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB2jCCAYSgAwIBAgICMDkwDQYJKoZIhvcNAQELBQAwDzENMAsGA1UEAwwEdGVz\ndDAeFw0yMDAxMDEwMDAwMDBaFw0zMDAxMDEwMDAwMDBaMA8xDTALBgNVBAMMBHRl\nc3QwggEiMA0GCSqGSIb3DQEBAQUAA4IBDwAwggEKAoIBAQCYvySN+CkTwoNpoxk5\ndLKsiOx5vX/tk3Ad54Hzn9xUQ7WfVHBQU/+PfHmPfQDRRuxC/bJpF5KEDDIR600F\njJUoz83QYSDHIuYaEbYEcZmYM3/1kjoGxtUn5qJS3XKeXLAbQ3R92neCXoWiwI9a\nok8ZCAQQJ+BNI2Jhp2yWLpKXJ2Ygde9dSuzlvDjo0jijmSGAg7uCL9cMJmVpN1JZ\nKIDIlN2DLtmpfpTWQq0veGKfLrhL22kVHZ13R1bq/QafmBgvHReO19z0Xd8Yp2NQ\nJUnIEH2wMWjqlST4H4vmV5T/s4m8Jy4PWP0U/iqJzVnGg6ENv4ZMpv1YcOqhIq03\nB8vRAgMBAAGjAjAAMA0GCSqGSIb3DQEBCwUAA0EAAQEBAQEBAQEBAQEBAQEBAQEB\nAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQ==\n-----END CERTIFICATE-----\n";
const ALG_MISMATCH_CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB1jCCAYCgAwIBAgICMDkwDQYJKoZIhvcNAQELBQAwDzENMAsGA1UEAwwEdGVz\ndDAeFw0yMDAxMDEwMDAwMDBaFw0zMDAxMDEwMDAwMDBaMA8xDTALBgNVBAMMBHRl\nc3QwggEiMA0GCSqGSIb3DQEBAQUAA4IBDwAwggEKAoIBAQCYvySN+CkTwoNpoxk5\ndLKsiOx5vX/tk3Ad54Hzn9xUQ7WfVHBQU/+PfHmPfQDRRuxC/bJpF5KEDDIR600F\njJUoz83QYSDHIuYaEbYEcZmYM3/1kjoGxtUn5qJS3XKeXLAbQ3R92neCXoWiwI9a\nok8ZCAQQJ+BNI2Jhp2yWLpKXJ2Ygde9dSuzlvDjo0jijmSGAg7uCL9cMJmVpN1JZ\nKIDIlN2DLtmpfpTWQq0veGKfLrhL22kVHZ13R1bq/QafmBgvHReO19z0Xd8Yp2NQ\nJUnIEH2wMWjqlST4H4vmV5T/s4m8Jy4PWP0U/iqJzVnGg6ENv4ZMpv1YcOqhIq03\nB8vRAgMBAAEwDQYJKoZIhvcNAQEMBQADQQABAQEBAQEBAQEBAQEBAQEBAQEBAQEB\nAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEB\n-----END CERTIFICATE-----\n";
const OUTER_ALG_NO_NULL_CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB1DCCAYCgAwIBAgICMDkwDQYJKoZIhvcNAQELBQAwDzENMAsGA1UEAwwEdGVz\ndDAeFw0yMDAxMDEwMDAwMDBaFw0zMDAxMDEwMDAwMDBaMA8xDTALBgNVBAMMBHRl\nc3QwggEiMA0GCSqGSIb3DQEBAQUAA4IBDwAwggEKAoIBAQCYvySN+CkTwoNpoxk5\ndLKsiOx5vX/tk3Ad54Hzn9xUQ7WfVHBQU/+PfHmPfQDRRuxC/bJpF5KEDDIR600F\njJUoz83QYSDHIuYaEbYEcZmYM3/1kjoGxtUn5qJS3XKeXLAbQ3R92neCXoWiwI9a\nok8ZCAQQJ+BNI2Jhp2yWLpKXJ2Ygde9dSuzlvDjo0jijmSGAg7uCL9cMJmVpN1JZ\nKIDIlN2DLtmpfpTWQq0veGKfLrhL22kVHZ13R1bq/QafmBgvHReO19z0Xd8Yp2NQ\nJUnIEH2wMWjqlST4H4vmV5T/s4m8Jy4PWP0U/iqJzVnGg6ENv4ZMpv1YcOqhIq03\nB8vRAgMBAAEwCwYJKoZIhvcNAQELA0EAAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEB\nAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQ==\n-----END CERTIFICATE-----\n";
const PRINTABLE_AT_CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB1TCCAX+gAwIBAgICMDkwDQYJKoZIhvcNAQELBQAwDzENMAsGA1UEAwwEdGVz\ndDAeFw0yMDAxMDEwMDAwMDBaFw0zMDAxMDEwMDAwMDBaMA4xDDAKBgNVBAMTA2FA\nYjCCASIwDQYJKoZIhvcNAQEBBQADggEPADCCAQoCggEBAJi/JI34KRPCg2mjGTl0\nsqyI7Hm9f+2TcB3ngfOf3FRDtZ9UcFBT/498eY99ANFG7EL9smkXkoQMMhHrTQWM\nlSjPzdBhIMci5hoRtgRxmZgzf/WSOgbG1SfmolLdcp5csBtDdH3ad4JehaLAj1qi\nTxkIBBAn4E0jYmGnbJYukpcnZiB1711K7OW8OOjSOKOZIYCDu4Iv1wwmZWk3Ulko\ngMiU3YMu2al+lNZCrS94Yp8uuEvbaRUdnXdHVur9Bp+YGC8dF47X3PRd3xinY1Al\nScgQfbAxaOqVJPgfi+ZXlP+zibwnLg9Y/RT+KonNWcaDoQ2/hkym/Vhw6qEirTcH\ny9ECAwEAATANBgkqhkiG9w0BAQsFAANBAAEBAQEBAQEBAQEBAQEBAQEBAQEBAQEB\nAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\n-----END CERTIFICATE-----\n";
const PRINTABLE_STAR_CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB1TCCAX+gAwIBAgICMDkwDQYJKoZIhvcNAQELBQAwDzENMAsGA1UEAwwEdGVz\ndDAeFw0yMDAxMDEwMDAwMDBaFw0zMDAxMDEwMDAwMDBaMA4xDDAKBgNVBAMTA2Eq\nYjCCASIwDQYJKoZIhvcNAQEBBQADggEPADCCAQoCggEBAJi/JI34KRPCg2mjGTl0\nsqyI7Hm9f+2TcB3ngfOf3FRDtZ9UcFBT/498eY99ANFG7EL9smkXkoQMMhHrTQWM\nlSjPzdBhIMci5hoRtgRxmZgzf/WSOgbG1SfmolLdcp5csBtDdH3ad4JehaLAj1qi\nTxkIBBAn4E0jYmGnbJYukpcnZiB1711K7OW8OOjSOKOZIYCDu4Iv1wwmZWk3Ulko\ngMiU3YMu2al+lNZCrS94Yp8uuEvbaRUdnXdHVur9Bp+YGC8dF47X3PRd3xinY1Al\nScgQfbAxaOqVJPgfi+ZXlP+zibwnLg9Y/RT+KonNWcaDoQ2/hkym/Vhw6qEirTcH\ny9ECAwEAATANBgkqhkiG9w0BAQsFAANBAAEBAQEBAQEBAQEBAQEBAQEBAQEBAQEB\nAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\n-----END CERTIFICATE-----\n";
const UTF8_INVALID_CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB1DCCAX6gAwIBAgICMDkwDQYJKoZIhvcNAQELBQAwDzENMAsGA1UEAwwEdGVz\ndDAeFw0yMDAxMDEwMDAwMDBaFw0zMDAxMDEwMDAwMDBaMA0xCzAJBgNVBAMMAv/+\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAmL8kjfgpE8KDaaMZOXSy\nrIjseb1/7ZNwHeeB85/cVEO1n1RwUFP/j3x5j30A0UbsQv2yaReShAwyEetNBYyV\nKM/N0GEgxyLmGhG2BHGZmDN/9ZI6BsbVJ+aiUt1ynlywG0N0fdp3gl6FosCPWqJP\nGQgEECfgTSNiYadsli6SlydmIHXvXUrs5bw46NI4o5khgIO7gi/XDCZlaTdSWSiA\nyJTdgy7ZqX6U1kKtL3hiny64S9tpFR2dd0dW6v0Gn5gYLx0Xjtfc9F3fGKdjUCVJ\nyBB9sDFo6pUk+B+L5leU/7OJvCcuD1j9FP4qic1ZxoOhDb+GTKb9WHDqoSKtNwfL\n0QIDAQABMA0GCSqGSIb3DQEBCwUAA0EAAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEB\nAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQ==\n-----END CERTIFICATE-----\n";
const IA5_NON_ASCII_CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB0zCCAX2gAwIBAgICMDkwDQYJKoZIhvcNAQELBQAwDzENMAsGA1UEAwwEdGVz\ndDAeFw0yMDAxMDEwMDAwMDBaFw0zMDAxMDEwMDAwMDBaMAwxCjAIBgNVBAMWAekw\nggEiMA0GCSqGSIb3DQEBAQUAA4IBDwAwggEKAoIBAQCYvySN+CkTwoNpoxk5dLKs\niOx5vX/tk3Ad54Hzn9xUQ7WfVHBQU/+PfHmPfQDRRuxC/bJpF5KEDDIR600FjJUo\nz83QYSDHIuYaEbYEcZmYM3/1kjoGxtUn5qJS3XKeXLAbQ3R92neCXoWiwI9aok8Z\nCAQQJ+BNI2Jhp2yWLpKXJ2Ygde9dSuzlvDjo0jijmSGAg7uCL9cMJmVpN1JZKIDI\nlN2DLtmpfpTWQq0veGKfLrhL22kVHZ13R1bq/QafmBgvHReO19z0Xd8Yp2NQJUnI\nEH2wMWjqlST4H4vmV5T/s4m8Jy4PWP0U/iqJzVnGg6ENv4ZMpv1YcOqhIq03B8vR\nAgMBAAEwDQYJKoZIhvcNAQELBQADQQABAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEB\nAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEB\n-----END CERTIFICATE-----\n";
const BMP_ODD_CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB1TCCAX+gAwIBAgICMDkwDQYJKoZIhvcNAQELBQAwDzENMAsGA1UEAwwEdGVz\ndDAeFw0yMDAxMDEwMDAwMDBaFw0zMDAxMDEwMDAwMDBaMA4xDDAKBgNVBAMeAwBh\nADCCASIwDQYJKoZIhvcNAQEBBQADggEPADCCAQoCggEBAJi/JI34KRPCg2mjGTl0\nsqyI7Hm9f+2TcB3ngfOf3FRDtZ9UcFBT/498eY99ANFG7EL9smkXkoQMMhHrTQWM\nlSjPzdBhIMci5hoRtgRxmZgzf/WSOgbG1SfmolLdcp5csBtDdH3ad4JehaLAj1qi\nTxkIBBAn4E0jYmGnbJYukpcnZiB1711K7OW8OOjSOKOZIYCDu4Iv1wwmZWk3Ulko\ngMiU3YMu2al+lNZCrS94Yp8uuEvbaRUdnXdHVur9Bp+YGC8dF47X3PRd3xinY1Al\nScgQfbAxaOqVJPgfi+ZXlP+zibwnLg9Y/RT+KonNWcaDoQ2/hkym/Vhw6qEirTcH\ny9ECAwEAATANBgkqhkiG9w0BAQsFAANBAAEBAQEBAQEBAQEBAQEBAQEBAQEBAQEB\nAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\n-----END CERTIFICATE-----\n";
const NUMERIC_LETTERS_CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB1TCCAX+gAwIBAgICMDkwDQYJKoZIhvcNAQELBQAwDzENMAsGA1UEAwwEdGVz\ndDAeFw0yMDAxMDEwMDAwMDBaFw0zMDAxMDEwMDAwMDBaMA4xDDAKBgNVBAMSAzEy\nYTCCASIwDQYJKoZIhvcNAQEBBQADggEPADCCAQoCggEBAJi/JI34KRPCg2mjGTl0\nsqyI7Hm9f+2TcB3ngfOf3FRDtZ9UcFBT/498eY99ANFG7EL9smkXkoQMMhHrTQWM\nlSjPzdBhIMci5hoRtgRxmZgzf/WSOgbG1SfmolLdcp5csBtDdH3ad4JehaLAj1qi\nTxkIBBAn4E0jYmGnbJYukpcnZiB1711K7OW8OOjSOKOZIYCDu4Iv1wwmZWk3Ulko\ngMiU3YMu2al+lNZCrS94Yp8uuEvbaRUdnXdHVur9Bp+YGC8dF47X3PRd3xinY1Al\nScgQfbAxaOqVJPgfi+ZXlP+zibwnLg9Y/RT+KonNWcaDoQ2/hkym/Vhw6qEirTcH\ny9ECAwEAATANBgkqhkiG9w0BAQsFAANBAAEBAQEBAQEBAQEBAQEBAQEBAQEBAQEB\nAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\n-----END CERTIFICATE-----\n";
const NAME_INTEGER_CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB0zCCAX2gAwIBAgICMDkwDQYJKoZIhvcNAQELBQAwDzENMAsGA1UEAwwEdGVz\ndDAeFw0yMDAxMDEwMDAwMDBaFw0zMDAxMDEwMDAwMDBaMAwxCjAIBgNVBAMCAQUw\nggEiMA0GCSqGSIb3DQEBAQUAA4IBDwAwggEKAoIBAQCYvySN+CkTwoNpoxk5dLKs\niOx5vX/tk3Ad54Hzn9xUQ7WfVHBQU/+PfHmPfQDRRuxC/bJpF5KEDDIR600FjJUo\nz83QYSDHIuYaEbYEcZmYM3/1kjoGxtUn5qJS3XKeXLAbQ3R92neCXoWiwI9aok8Z\nCAQQJ+BNI2Jhp2yWLpKXJ2Ygde9dSuzlvDjo0jijmSGAg7uCL9cMJmVpN1JZKIDI\nlN2DLtmpfpTWQq0veGKfLrhL22kVHZ13R1bq/QafmBgvHReO19z0Xd8Yp2NQJUnI\nEH2wMWjqlST4H4vmV5T/s4m8Jy4PWP0U/iqJzVnGg6ENv4ZMpv1YcOqhIq03B8vR\nAgMBAAEwDQYJKoZIhvcNAQELBQADQQABAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEB\nAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEB\n-----END CERTIFICATE-----\n";
const SAN_IP_LEN_5_CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB7DCCAZagAwIBAgICMDkwDQYJKoZIhvcNAQELBQAwDzENMAsGA1UEAwwEdGVz\ndDAeFw0yMDAxMDEwMDAwMDBaFw0zMDAxMDEwMDAwMDBaMA8xDTALBgNVBAMMBHRl\nc3QwggEiMA0GCSqGSIb3DQEBAQUAA4IBDwAwggEKAoIBAQCYvySN+CkTwoNpoxk5\ndLKsiOx5vX/tk3Ad54Hzn9xUQ7WfVHBQU/+PfHmPfQDRRuxC/bJpF5KEDDIR600F\njJUoz83QYSDHIuYaEbYEcZmYM3/1kjoGxtUn5qJS3XKeXLAbQ3R92neCXoWiwI9a\nok8ZCAQQJ+BNI2Jhp2yWLpKXJ2Ygde9dSuzlvDjo0jijmSGAg7uCL9cMJmVpN1JZ\nKIDIlN2DLtmpfpTWQq0veGKfLrhL22kVHZ13R1bq/QafmBgvHReO19z0Xd8Yp2NQ\nJUnIEH2wMWjqlST4H4vmV5T/s4m8Jy4PWP0U/iqJzVnGg6ENv4ZMpv1YcOqhIq03\nB8vRAgMBAAGjFDASMBAGA1UdEQQJMAeHBQECAwQFMA0GCSqGSIb3DQEBCwUAA0EA\nAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEB\nAQEBAQEBAQEBAQEBAQEBAQ==\n-----END CERTIFICATE-----\n";
const SAN_BAD_URI_CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB8jCCAZygAwIBAgICMDkwDQYJKoZIhvcNAQELBQAwDzENMAsGA1UEAwwEdGVz\ndDAeFw0yMDAxMDEwMDAwMDBaFw0zMDAxMDEwMDAwMDBaMA8xDTALBgNVBAMMBHRl\nc3QwggEiMA0GCSqGSIb3DQEBAQUAA4IBDwAwggEKAoIBAQCYvySN+CkTwoNpoxk5\ndLKsiOx5vX/tk3Ad54Hzn9xUQ7WfVHBQU/+PfHmPfQDRRuxC/bJpF5KEDDIR600F\njJUoz83QYSDHIuYaEbYEcZmYM3/1kjoGxtUn5qJS3XKeXLAbQ3R92neCXoWiwI9a\nok8ZCAQQJ+BNI2Jhp2yWLpKXJ2Ygde9dSuzlvDjo0jijmSGAg7uCL9cMJmVpN1JZ\nKIDIlN2DLtmpfpTWQq0veGKfLrhL22kVHZ13R1bq/QafmBgvHReO19z0Xd8Yp2NQ\nJUnIEH2wMWjqlST4H4vmV5T/s4m8Jy4PWP0U/iqJzVnGg6ENv4ZMpv1YcOqhIq03\nB8vRAgMBAAGjGjAYMBYGA1UdEQQPMA2GC2h0dHA6Ly9bOjoxMA0GCSqGSIb3DQEB\nCwUAA0EAAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEB\nAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQ==\n-----END CERTIFICATE-----\n";
const EMPTY_NAME_CONSTRAINTS_CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB6DCCAZKgAwIBAgICMDkwDQYJKoZIhvcNAQELBQAwDzENMAsGA1UEAwwEdGVz\ndDAeFw0yMDAxMDEwMDAwMDBaFw0zMDAxMDEwMDAwMDBaMA8xDTALBgNVBAMMBHRl\nc3QwggEiMA0GCSqGSIb3DQEBAQUAA4IBDwAwggEKAoIBAQCYvySN+CkTwoNpoxk5\ndLKsiOx5vX/tk3Ad54Hzn9xUQ7WfVHBQU/+PfHmPfQDRRuxC/bJpF5KEDDIR600F\njJUoz83QYSDHIuYaEbYEcZmYM3/1kjoGxtUn5qJS3XKeXLAbQ3R92neCXoWiwI9a\nok8ZCAQQJ+BNI2Jhp2yWLpKXJ2Ygde9dSuzlvDjo0jijmSGAg7uCL9cMJmVpN1JZ\nKIDIlN2DLtmpfpTWQq0veGKfLrhL22kVHZ13R1bq/QafmBgvHReO19z0Xd8Yp2NQ\nJUnIEH2wMWjqlST4H4vmV5T/s4m8Jy4PWP0U/iqJzVnGg6ENv4ZMpv1YcOqhIq03\nB8vRAgMBAAGjEDAOMAwGA1UdHgEB/wQCMAAwDQYJKoZIhvcNAQELBQADQQABAQEB\nAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEB\nAQEBAQEBAQEBAQEB\n-----END CERTIFICATE-----\n";
const NC_IP_LEN_5_CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB8DCCAZqgAwIBAgICMDkwDQYJKoZIhvcNAQELBQAwDzENMAsGA1UEAwwEdGVz\ndDAeFw0yMDAxMDEwMDAwMDBaFw0zMDAxMDEwMDAwMDBaMA8xDTALBgNVBAMMBHRl\nc3QwggEiMA0GCSqGSIb3DQEBAQUAA4IBDwAwggEKAoIBAQCYvySN+CkTwoNpoxk5\ndLKsiOx5vX/tk3Ad54Hzn9xUQ7WfVHBQU/+PfHmPfQDRRuxC/bJpF5KEDDIR600F\njJUoz83QYSDHIuYaEbYEcZmYM3/1kjoGxtUn5qJS3XKeXLAbQ3R92neCXoWiwI9a\nok8ZCAQQJ+BNI2Jhp2yWLpKXJ2Ygde9dSuzlvDjo0jijmSGAg7uCL9cMJmVpN1JZ\nKIDIlN2DLtmpfpTWQq0veGKfLrhL22kVHZ13R1bq/QafmBgvHReO19z0Xd8Yp2NQ\nJUnIEH2wMWjqlST4H4vmV5T/s4m8Jy4PWP0U/iqJzVnGg6ENv4ZMpv1YcOqhIq03\nB8vRAgMBAAGjGDAWMBQGA1UdHgQNMAugCTAHhwUBAgMEBTANBgkqhkiG9w0BAQsF\nAANBAAEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEB\nAQEBAQEBAQEBAQEBAQEBAQEBAQE=\n-----END CERTIFICATE-----\n";

/// The builtin's answer in both modes for a certificate Go refuses: never a value from a key.
/// A refusal Gantry is sure of is OPA's error (undefined when not strict); the rest are hard.
fn refused(cert: &str) -> Result<String, String> {
    assert!(verifies(verify_rs256, REVIEW_RS256, REVIEW_CERT));
    let mut f = verify_rs256(lenient);
    match f(alloc::vec![Value::from(REVIEW_RS256), Value::from(cert)]) {
        Ok(Value::Undefined) => Ok(call(verify_rs256, REVIEW_RS256, cert).unwrap_err()),
        Ok(other) => panic!("a value from a certificate Go refuses: {other:?}"),
        Err(e) => Err(e.to_string()),
    }
}

#[test]
fn a_certificate_go_refuses_never_yields_a_key() {
    assert!(verifies(verify_rs256, REVIEW_RS256, PRINTABLE_STAR_CERT));
    let cert = |c: &str| format!(r#"{{"cert": {}, "time": 1000000000000000000}}"#, quoted(c));
    assert!(verified(REVIEW_RS256, &cert(REVIEW_CERT)));
    assert!(matches!(
        decode_verified(REVIEW_RS256, &cert(NAME_INTEGER_CERT)),
        Err(Error::Builtin(e)) if e.contains("unsupported string type: 2")
    ));
}

/// Go compares the TBS certificate's signature algorithm identifier with the outer one byte for
/// byte: a NULL parameter on one side only differs too.
#[test]
fn a_certificate_whose_inner_and_outer_signature_algorithms_differ_yields_no_key() {
    for c in [ALG_MISMATCH_CERT, OUTER_ALG_NO_NULL_CERT] {
        let e = refused(c).unwrap();
        assert!(
            e.contains("x509: inner and outer signature algorithm identifiers don't match"),
            "{e}"
        );
    }
}

/// Go's `parseName` takes an attribute value only as one of its string types, each checked.
#[test]
fn a_certificate_with_a_name_value_go_refuses_yields_no_key() {
    for (c, why) in [
        (PRINTABLE_AT_CERT, "invalid PrintableString"),
        (UTF8_INVALID_CERT, "invalid UTF-8 string"),
        (IA5_NON_ASCII_CERT, "invalid IA5String"),
        (BMP_ODD_CERT, "invalid BMPString"),
        (NUMERIC_LETTERS_CERT, "invalid NumericString"),
        (NAME_INTEGER_CERT, "unsupported string type: 2"),
    ] {
        let e = refused(c).unwrap();
        assert!(
            e.contains(&format!(
                "x509: invalid RDNSequence: invalid attribute value: {why}"
            )),
            "{e}"
        );
    }
}

/// An IP address of 5 bytes is Go's error; a URI Go's `url.Parse` might refuse is a hard one.
#[test]
fn a_certificate_with_a_subject_alternative_name_go_refuses_yields_no_key() {
    let e = refused(SAN_IP_LEN_5_CERT).unwrap();
    assert!(
        e.contains("x509: cannot parse IP address of length 5"),
        "{e}"
    );
    let e = refused(SAN_BAD_URI_CERT).unwrap_err();
    assert!(e.contains(r#""http://[::1""#), "{e}");
}

#[test]
fn a_certificate_with_name_constraints_go_refuses_yields_no_key() {
    let e = refused(EMPTY_NAME_CONSTRAINTS_CERT).unwrap();
    assert!(e.contains("x509: empty name constraints extension"), "{e}");
    let e = refused(NC_IP_LEN_5_CERT).unwrap();
    assert!(
        e.contains("x509: IP constraint contained value of length 5"),
        "{e}"
    );
}
