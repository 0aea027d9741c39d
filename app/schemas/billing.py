from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.schemas.common import SafeStr

ReturnUrl = Annotated[
    SafeStr,
    Field(
        max_length=2000,
        description="An absolute URL on one of the allowed origins (CHECKOUT_RETURN_ORIGINS).",
    ),
]


class Product(BaseModel):
    id: str = Field(examples=["credits_50"])
    mode: Literal["payment", "subscription"] = Field(
        description="`payment`: a credit pack, bought once; `subscription`: the Pro plan."
    )
    credits: int = Field(
        examples=[50], description="Credits per purchase, or per paid invoice for the plan."
    )


class ProductList(BaseModel):
    items: list[Product]


class CheckoutCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "product_id": "credits_50",
                "success_url": "https://app.example.com/billing/done?session_id={CHECKOUT_SESSION_ID}",
            }
        },
    )

    product_id: SafeStr = Field(min_length=1, max_length=100)
    success_url: ReturnUrl | None = None
    cancel_url: ReturnUrl | None = None


class CheckoutSession(BaseModel):
    id: str = Field(examples=["cs_test_a1b2c3"])
    url: str = Field(description="Stripe Checkout's page: send the buyer there.")


class PortalCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    return_url: ReturnUrl | None = None


class PortalSession(BaseModel):
    url: str = Field(description="Stripe's billing portal for the caller.")


class WebhookReceipt(BaseModel):
    received: bool = True
    outcome: Literal["processed", "duplicate"] = Field(
        description="`duplicate`: this event was processed before; nothing was applied again."
    )
