from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.schemas.common import SafeStr

ReturnUrl = Annotated[
    SafeStr,
    Field(
        max_length=2000,
        description="An absolute URL on one of the allowed origins (CHECKOUT_RETURN_ORIGINS).",
    ),
]


CHECKOUT_URL_EXAMPLE = (
    "https://checkout.stripe.com/c/pay/cs_test_a1b2c3#fidkdWxOYHwnPyd1blpxYHZxWjA0"
)
PRODUCTS_EXAMPLE: list[Any] = [
    {"id": "credits_50", "mode": "payment", "credits": 50},
    {"id": "pro", "mode": "subscription", "credits": 200},
]


class Product(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": PRODUCTS_EXAMPLE})

    id: str = Field(examples=["credits_50"])
    mode: Literal["payment", "subscription"] = Field(
        description="`payment`: a credit pack, bought once; `subscription`: the Pro plan."
    )
    credits: int = Field(
        examples=[50], description="Credits per purchase, or per paid invoice for the plan."
    )


class ProductList(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"items": PRODUCTS_EXAMPLE}]})

    items: list[Product]


class CheckoutCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "product_id": "credits_50",
                    "success_url": "https://app.example.com/billing/done?session_id={CHECKOUT_SESSION_ID}",
                }
            ]
        },
    )

    product_id: SafeStr = Field(min_length=1, max_length=100)
    success_url: ReturnUrl | None = None
    cancel_url: ReturnUrl | None = None


class CheckoutSession(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"id": "cs_test_a1b2c3", "url": CHECKOUT_URL_EXAMPLE}]}
    )

    id: str = Field(examples=["cs_test_a1b2c3"])
    url: str = Field(description="Stripe Checkout's page: send the buyer there.")


class PortalCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"return_url": "https://app.example.com/settings"}]},
    )

    return_url: ReturnUrl | None = None


class PortalSession(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"url": "https://billing.stripe.com/p/session/test_YWNjdF8xTjJhYmM"}]
        }
    )

    url: str = Field(description="Stripe's billing portal for the caller.")


class WebhookReceipt(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"received": True, "outcome": "processed"}]}
    )

    received: bool = True
    outcome: Literal["processed", "duplicate"] = Field(
        description="`duplicate`: this event was processed before; nothing was applied again."
    )
